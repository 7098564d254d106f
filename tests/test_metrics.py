"""GET /metrics: Prometheus text, labelled by route template, open without a key; pool,
in-flight and event-loop figures; one answer for all workers of `serve --workers 2`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from stockroom.observability import Metrics
from tests.support.apps import client_for, make_settings, start_app
from tests.support.items import ItemFactory
from tests.support.servers import start_server
from tests.support.waiting import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_count_requests_by_route_template(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    items = [await new_item() for _ in range(2)]
    before = await scrape(client)
    for item in items:
        assert (await client.get(f"/items/{item['id']}")).status_code == 200
    assert (await client.get("/items/99999")).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    after = await scrape(client)

    route = {"route": "/items/{item_id}", "method": "GET"}
    total = "stockroom_http_requests_total"
    assert (
        value(after, total, **route, status="200") - value(before, total, **route, status="200")
        == 2
    )
    assert (
        value(after, total, **route, status="404") - value(before, total, **route, status="404")
        == 1
    )
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(after, total, **unmatched) - value(before, total, **unmatched) == 1
    count = "stockroom_http_request_duration_seconds_count"
    assert value(after, count, **route) - value(before, count, **route) == 3
    # Never the raw path: no label anywhere holds an item id or the unknown path.
    for _name, labels in after:
        for _key, label in labels:
            assert label not in {f"/items/{items[0]['id']}", "/no/such/path"}
    # The scrape itself is in flight while it is answered.
    assert value(after, "stockroom_http_requests_in_flight") >= 1


async def test_pool_gauges_follow_checked_out_connections(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    settings = app.state.settings
    idle = await scrape(client)
    assert value(idle, "stockroom_db_pool_size") == settings.database_pool_size
    assert value(idle, "stockroom_db_pool_max") == (
        settings.database_pool_size + settings.database_max_overflow
    )
    database = app.state.resources.stores.database  # the requests' pool
    async with database.connection(), database.connection():
        busy = await scrape(client)
    assert value(busy, "stockroom_db_pool_checked_out") >= 2
    assert value(busy, "stockroom_db_pool_checked_out") > value(
        idle, "stockroom_db_pool_checked_out"
    )


PROBE_SECONDS = 0.05


@pytest.fixture
async def fresh_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(database_url, event_loop_probe_seconds=PROBE_SECONDS)
    application, lifespan = await start_app(settings)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_a_blocked_event_loop_shows_as_lag(fresh_app: FastAPI) -> None:
    lag = "stockroom_event_loop_lag_seconds"
    async with client_for(fresh_app) as http:
        await wait_until(lambda: _lag_probes(fresh_app)[0] >= 1)  # at least one at rest
        _, late_before = _lag_probes(fresh_app)
        # The blocking call a careless handler makes: the probe, asleep meanwhile, wakes up
        # at least 0.5 - PROBE_SECONDS late and records it.
        time.sleep(0.5)  # noqa: ASYNC251
        await wait_until(lambda: _lag_probes(fresh_app)[1] > late_before)
        samples = await scrape(http)
    observed = value(samples, lag + "_count")
    at_most_quarter = value(samples, lag + "_bucket", le="0.25")
    assert observed >= 2
    # The blocked half second shows as > 0.25 s of lag at /metrics.
    assert observed - at_most_quarter > late_before


def _lag_probes(application: FastAPI) -> tuple[float, float]:
    """How many lag probes the app has recorded, and how many of them more than 0.25 s late
    (read from its registry, without a request)."""
    metrics: Metrics = application.state.metrics
    name = "stockroom_event_loop_lag_seconds"
    count = metrics.registry.get_sample_value(name + "_count") or 0.0
    quick = metrics.registry.get_sample_value(name + "_bucket", {"le": "0.25"}) or 0.0
    return count, count - quick


@pytest.mark.postgresql_only
async def test_workers_report_together(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    server = start_server(database_url, tmp_path, "--workers", "2")
    try:
        for _ in range(40):  # a new connection each time, so both workers take some
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                response = await http.get("/ping", headers={"X-Request-ID": "count-me"})
                assert response.status_code == 200
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for _ in range(4):  # whichever worker answers, it answers for both
                samples = await scrape(http)
                count = value(
                    samples,
                    "stockroom_http_requests_total",
                    route="/ping",
                    method="GET",
                    status="200",
                )
                assert count == 40
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def delta(after: Samples, before: Samples, route: str, method: str, status: str) -> float:
    total = "stockroom_http_requests_total"
    labels = {"route": route, "method": method, "status": status}
    return value(after, total, **labels) - value(before, total, **labels)


async def test_requests_answered_before_or_beside_the_routes_keep_a_route_label(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Docs assets (a mount), a trailing-slash redirect (by the router) and a 413 (by the
    body limit, before routing) are labelled by the route their path matches."""
    before = await scrape(client)
    asset = await client.get("/docs-assets/swagger-ui.css")
    assert asset.status_code == 200
    redirect = await client.get("/items/")
    assert redirect.status_code == 307
    assert redirect.headers["location"].endswith("/items")
    too_large = await client.post(
        "/items",
        content=b"{" + b" " * app.state.settings.max_body_bytes + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert too_large.status_code == 413
    assert (await client.get("/no/such/path/")).status_code == 404
    after = await scrape(client)

    assert delta(after, before, "/docs-assets/{path}", "GET", "200") == 1
    assert delta(after, before, "/items", "GET", "307") == 1
    assert delta(after, before, "/items", "POST", "413") == 1
    assert delta(after, before, "<unmatched>", "GET", "404") == 1
    assert delta(after, before, "<unmatched>", "GET", "200") == 0
    assert delta(after, before, "<unmatched>", "GET", "307") == 0
    assert delta(after, before, "<unmatched>", "POST", "413") == 0


async def test_a_204_has_no_content_type_and_no_body(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    name = f"to-revoke-{uuid.uuid4().hex[:8]}"
    created = await client.post("/keys", json={"name": name, "scopes": ["read"]})
    assert created.status_code == 201, created.text
    item = await new_item()
    for path in (f"/keys/{name}", f"/items/{item['id']}"):
        deleted = await client.delete(path)
        assert deleted.status_code == 204, deleted.text
        assert "content-type" not in deleted.headers, path
        assert "content-length" not in deleted.headers, path
        assert deleted.content == b""
        assert deleted.headers["x-request-id"]
