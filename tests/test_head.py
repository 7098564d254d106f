"""HEAD on every GET route answers what the GET answers, without the body: checked route by
route against a real `stockroom serve` over TCP, the routes taken from the app itself, so a
new GET route is covered (or this test fails until it says how to reach it)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from stockroom.app import create_app
from stockroom.settings import Settings
from tests.support.apps import create_key
from tests.support.problems import problem
from tests.support.servers import Server, start_server

# Headers that differ between any two answers, or that only a streamed GET has.
_VOLATILE = {"date", "x-request-id", "transfer-encoding"}
# Answers whose content changes between two requests (the request counters).
_CHANGING_BODY = {"/metrics"}


def get_paths(app: FastAPI) -> list[str]:
    """Every GET route's path template, the API's and the docs' (and one docs asset)."""
    paths = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            paths.append(f"{route.path}/swagger-ui.css")
        elif "GET" in (context.methods or ()):
            assert context.path_format is not None
            paths.append(context.path_format)
    return paths


def comparable(response: httpx.Response, path: str) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k not in _VOLATILE}
    if "content-disposition" in headers:  # the file name has the time, to the second
        headers["content-disposition"] = re.sub(
            r"\d{8}T\d{6}Z", "<stamp>", headers["content-disposition"]
        )
    if path in _CHANGING_BODY and "content-length" in headers:
        headers["content-length"] = "<changes>"
    return headers


@pytest.fixture
def head_server(database_url: str, tmp_path: Path, client: httpx.AsyncClient) -> Iterator[Server]:
    env = {"STOCKROOM_WEBHOOK_ALLOW_PRIVATE": "true", "STOCKROOM_WEBHOOK_DISPATCHER": "off"}
    running = start_server(database_url, tmp_path, env_extra=env)
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


async def get_answer(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """The GET's status and headers; a stream is read only up to its headers."""
    async with http.stream("GET", url, headers=headers) as response:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aread()
        return response


async def test_head_matches_get_on_every_get_route(
    head_server: Server, database_url: str, app: FastAPI
) -> None:
    # Made in-process, as `stockroom apikey create` makes it, in the server's database.
    key = await create_key(app, f"head-{uuid.uuid4().hex[:8]}", ["admin"])
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=head_server.url, timeout=10) as http:
        item = await http.post(
            "/items",
            json={"sku": "HEAD-1", "name": "Head", "price": 2, "quantity": 3},
            headers=auth,
        )
        assert item.status_code == 201, item.text
        webhook = await http.post(
            "/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, headers=auth
        )
        assert webhook.status_code == 201, webhook.text
        values = {"item_id": str(item.json()["id"]), "webhook_id": webhook.json()["id"]}

        paths = get_paths(create_app(Settings(database_url=database_url)))
        assert {"/items/{item_id}", "/events", "/docs", "/openapi.json"} <= set(paths)
        checked = []
        for template in paths:
            url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)
            for headers in (auth, {}):  # with the key, and without (401 where one is needed)
                got = await get_answer(http, url, headers)
                head = await asyncio.wait_for(http.head(url, headers=headers), 10)
                assert head.status_code == got.status_code, (url, headers)
                assert comparable(head, template) == comparable(got, template), url
                assert head.content == b""
                checked.append((url, got.status_code))
        assert ("/events", 200) in checked
        assert ("/events", 401) in checked
        assert ("/items/export", 200) in checked
        assert (f"/items/{values['item_id']}", 200) in checked

        # Conditional: If-None-Match with the current ETag is a 304 for HEAD as for GET.
        url = f"/items/{values['item_id']}"
        etag = item.headers["etag"]
        for method in ("GET", "HEAD"):
            answer = await http.request(method, url, headers={**auth, "If-None-Match": etag})
            assert answer.status_code == 304
            assert answer.headers["etag"] == etag
            assert answer.content == b""
        stale = await http.head(url, headers={**auth, "If-None-Match": '"1-0"'})
        assert stale.status_code == 200
        assert int(stale.headers["content-length"]) == len(
            (await http.get(url, headers=auth)).content
        )

        # An error keeps its headers: a missing item is the GET's 404, without the body.
        missing = await http.head("/items/2000000000", headers=auth)
        got = await http.get("/items/2000000000", headers=auth)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["content-length"] == got.headers["content-length"]

        # HEAD where there is no GET is 405, like GET; Allow names HEAD wherever GET is.
        refused = await http.head("/keys/someone", headers=auth)
        assert refused.status_code == 405
        assert refused.headers["allow"] == "DELETE"
        put = await http.put(url, headers=auth)
        problem(put, 405)
        assert put.headers["allow"] == "DELETE, GET, HEAD, PATCH"

    lines = head_server.log_lines()
    access = [line for line in lines if line.get("logger") == "stockroom.access"]
    heads = [line for line in access if line["method"] == "HEAD"]
    assert {"route": "/items/{item_id}", "status": 200} in [
        {"route": line["route"], "status": line["status"]} for line in heads
    ]


async def test_head_on_the_stream_and_the_export_starts_neither(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """In-process, where a started stream would keep the request open: HEAD returns, and
    the event hub has no subscriber."""
    hub = app.state.resources.event_hub
    before = hub.subscribers
    async with asyncio.timeout(10):
        stream = await client.head("/events")
        export = await client.head("/items/export?format=ndjson")
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in stream.headers
    assert hub.subscribers == before
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert export.headers["content-disposition"].startswith('attachment; filename="items-')
    # The stream's checks still run: a bad cursor is the GET's 410.
    gone = await client.head("/events?after=not-a-cursor")
    assert gone.status_code == 410
    assert gone.headers["content-type"] == "application/problem+json"
