"""Webhooks: the admin API, the SSRF guard, and delivery to real receivers on 127.0.0.1,
with signatures checked by the `standardwebhooks` package (code we did not write)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import httpx
import pytest
import standardwebhooks
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.db import utcnow
from stockroom.events.models import Event
from stockroom.webhooks import queue
from stockroom.webhooks.models import Delivery
from tests.support.apps import client_for, create_key
from tests.support.problems import problem
from tests.support.waiting import wait_until
from tests.webhooks.dispatching import admin, running_app, subscribe
from tests.webhooks.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


async def attempts(http: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/webhooks/{webhook_id}/deliveries?limit=500")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# --- the API -------------------------------------------------------------------------------


async def test_create_list_get_delete(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/webhooks", json={"url": "https://93.184.216.34/hooks", "events": ["item.created"]}
    )
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "url", "events", "secret", "created_at"}
    assert created.headers["location"] == f"/webhooks/{body['id']}"
    assert body["events"] == ["item.created"]
    # A generated secret is whsec_ + base64 of random bytes, usable by standard libraries.
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) >= 24
    standardwebhooks.Webhook(body["secret"])

    one = (await client.get(f"/webhooks/{body['id']}")).json()
    assert "secret" not in one
    assert one == {k: v for k, v in body.items() if k != "secret"}
    listed = (await client.get("/webhooks")).json()
    assert listed == {"data": [one], "next_cursor": None}

    assert (await client.delete(f"/webhooks/{body['id']}")).status_code == 204
    problem(await client.get(f"/webhooks/{body['id']}"), 404)
    problem(await client.delete(f"/webhooks/{body['id']}"), 404)
    problem(await client.get(f"/webhooks/{body['id']}/deliveries"), 404)


async def test_the_list_pages(client: httpx.AsyncClient) -> None:
    made = [(await subscribe(client, f"https://93.184.216.34/{n}"))["id"] for n in range(5)]
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get("/webhooks" + query)).json()
        seen += [w["id"] for w in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": "ftp://93.184.216.34/", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "https://user:pw@93.184.216.34/", "events": ["*"]}, "url"),
        ({"url": "https://93.184.216.34/", "events": []}, "events"),
        ({"url": "https://93.184.216.34/", "events": ["item.exploded"]}, "events"),
        ({"url": "https://93.184.216.34/", "events": ["*", "item.created"]}, "events"),
        ({"url": "https://93.184.216.34/", "events": ["*"], "secret": "hunter2"}, "secret"),
        ({"url": "https://93.184.216.34/", "events": ["*"], "secret": "whsec_c2hvcnQ="}, "secret"),
        ({"url": "https://93.184.216.34/", "events": ["*"], "secret": "whsec_!!!"}, "secret"),
        ({"url": "https://93.184.216.34/", "events": ["*"], "extra": 1}, "extra"),
    ],
)
async def test_bad_subscriptions_are_422(
    client: httpx.AsyncClient, body: dict[str, Any], where: str
) -> None:
    errors = problem(await client.post("/webhooks", json=body), 422)["errors"]
    assert any(where in e["loc"] for e in errors), errors


async def test_a_given_secret_is_kept(client: httpx.AsyncClient) -> None:
    body = await subscribe(client, "https://93.184.216.34/", secret=SECRET)
    assert body["secret"] == SECRET


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://172.16.0.1/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://100.64.0.1/hook", "not public"),
        ("http://no-such-host.invalid/hook", "cannot resolve"),
    ],
)
async def test_private_addresses_are_refused(
    client: httpx.AsyncClient, url: str, kind: str
) -> None:
    body = problem(await client.post("/webhooks", json={"url": url, "events": ["*"]}), 422)
    assert kind in body["detail"], body["detail"]
    assert body["errors"][0]["loc"] == ["body", "url"]


async def test_private_addresses_are_allowed_with_the_setting(database_url: str) -> None:
    async with running_app(database_url, webhook_allow_private=True) as application:
        key = await create_key(application, "allow-private", ["admin"])
        async with client_for(application, key) as http:
            for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://localhost/h"):
                created = await subscribe(http, url)
                assert (await http.delete(f"/webhooks/{created['id']}")).status_code == 204


# --- delivery ------------------------------------------------------------------------------


@pytest.fixture
async def dispatching_app(database_url: str, client: httpx.AsyncClient) -> Any:
    """An app with the dispatcher on, fast retries, 3 attempts at most.
    (``client``: the tables are emptied afterwards.)"""
    async with running_app(database_url, webhook_max_attempts=3) as application:
        yield application


async def test_deliveries_are_signed_per_standard_webhooks(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        hook = await subscribe(http, f"{receiver.url}/ok", secret=SECRET)
        item = (await http.post("/items", json={"sku": "W-1", "name": "W", "price": 1})).json()
        await http.patch(f"/items/{item['id']}", json={"price": "2.50"})
        await http.post(f"/items/{item['id']}/adjustments", json={"delta": 4})
        await http.post(f"/items/{item['id']}/adjustments", json={"delta": -4})
        await http.delete(f"/items/{item['id']}")
        await wait_until(lambda: len(receiver.on("/ok")) >= 5)

        verifier = standardwebhooks.Webhook(SECRET)
        got = []
        for request in receiver.on("/ok"):
            payload = verifier.verify(request.body, request.headers)  # raises if not valid
            assert request.headers["webhook-id"] == payload["id"]
            assert request.headers["content-type"] == "application/json"
            got.append(payload)
        assert sorted(p["type"] for p in got) == sorted(
            ["item.created", "item.updated", "stock.adjusted", "stock.adjusted", "item.deleted"]
        )
        assert {p["data"]["id"] for p in got if p["type"].startswith("item.")} == {item["id"]}
        updated = next(p for p in got if p["type"] == "item.updated")
        assert updated["data"]["price"] == "2.50"

        # A tampered body or another secret does not verify.
        first = receiver.on("/ok")[0]
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            verifier.verify(first.body + b" ", first.headers)
        other = "whsec_" + base64.b64encode(b"x" * 32).decode()
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(other).verify(first.body, first.headers)

        await wait_until(lambda: _all_delivered(http, hook["id"], 5))
        for attempt in await attempts(http, hook["id"]):
            assert attempt["status"] == "delivered"
            assert attempt["attempt"] == 1
            assert attempt["response_status"] == 204
            assert attempt["error"] is None
            assert attempt["next_attempt_at"] is None


async def _all_delivered(http: httpx.AsyncClient, webhook_id: str, count: int) -> bool:
    rows = await attempts(http, webhook_id)
    return len(rows) >= count and all(r["status"] == "delivered" for r in rows)


async def test_only_the_subscribed_types_are_sent(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        await subscribe(http, f"{receiver.url}/ok", ["stock.adjusted"])
        item = (await http.post("/items", json={"sku": "T-1", "name": "T", "price": 1})).json()
        await http.post(f"/items/{item['id']}/adjustments", json={"delta": 2})
        await wait_until(lambda: len(receiver.on("/ok")) >= 1)
        # Wait for the whole log to have been dispatched before looking for extras.
        await http.post(f"/items/{item['id']}/adjustments", json={"delta": 3})
        await wait_until(lambda: len(receiver.on("/ok")) >= 2)
        types = [json.loads(r.body)["type"] for r in receiver.on("/ok")]
        assert types == ["stock.adjusted", "stock.adjusted"]


async def test_a_stock_low_subscriber_gets_the_item_once_when_it_reaches_its_reorder_point(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        await subscribe(http, f"{receiver.url}/low", ["stock.low"], secret=SECRET)
        body = {"sku": "L-1", "name": "L", "price": 1, "quantity": 8, "reorder_point": 5}
        item = (await http.post("/items", json=body)).json()
        for delta in (-2, -2, -1, 10, -6):  # 6, 4 (low), 3, 13 (above again), 7: one crossing
            answer = await http.post(f"/items/{item['id']}/adjustments", json={"delta": delta})
            assert answer.status_code == 201, answer.text
        await wait_until(lambda: len(receiver.on("/low")) >= 1)
        # Everything written before it is dispatched once this later crossing arrives.
        answer = await http.post(f"/items/{item['id']}/adjustments", json={"delta": -3})
        await wait_until(lambda: len(receiver.on("/low")) >= 2)
        payloads = [
            standardwebhooks.Webhook(SECRET).verify(r.body, r.headers) for r in receiver.on("/low")
        ]
        assert [p["type"] for p in payloads] == ["stock.low", "stock.low"]
        assert [(p["data"]["id"], p["data"]["quantity"]) for p in payloads] == [
            (item["id"], 4),
            (item["id"], 4),
        ]
        assert payloads[0]["data"]["reorder_point"] == 5


async def test_a_flaky_receiver_gets_it_on_the_third_attempt(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        hook = await subscribe(http, f"{receiver.url}/flaky/2", ["item.created"])
        await http.post("/items", json={"sku": "F-1", "name": "F", "price": 1})
        await wait_until(lambda: _attempt_count(http, hook["id"], 3))
        rows = list(reversed(await attempts(http, hook["id"])))
        assert [r["attempt"] for r in rows] == [1, 2, 3]
        assert [r["status"] for r in rows] == ["pending", "pending", "delivered"]
        assert [r["response_status"] for r in rows] == [503, 503, 200]
        assert rows[0]["next_attempt_at"] is not None
        assert len({r["event_id"] for r in rows}) == 1
        assert rows[0]["type"] == "item.created"
        # Each retry waited for its backoff: the second gap about twice the first.
        sent = receiver.on("/flaky/2")
        assert len(sent) == 3
        assert len({r.headers["webhook-id"] for r in sent}) == 1


async def _attempt_count(http: httpx.AsyncClient, webhook_id: str, count: int) -> bool:
    return len(await attempts(http, webhook_id)) >= count


async def test_a_receiver_that_always_fails_ends_failed(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        hook = await subscribe(http, f"{receiver.url}/fail", ["item.created"])
        await http.post("/items", json={"sku": "X-1", "name": "X", "price": 1})
        await wait_until(lambda: _attempt_count(http, hook["id"], 3))
        rows = list(reversed(await attempts(http, hook["id"])))
        assert [r["status"] for r in rows] == ["pending", "pending", "failed"]
        assert rows[-1]["next_attempt_at"] is None
        assert rows[-1]["error"] == "HTTP 500: not a 2xx"
        # Given up: no fourth attempt.
        await http.post("/items", json={"sku": "X-2", "name": "X", "price": 1})
        await wait_until(lambda: _attempt_count(http, hook["id"], 6))
        assert len(receiver.on("/fail")) == 6


async def test_a_hanging_receiver_times_out_and_is_retried(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        hook = await subscribe(http, f"{receiver.url}/hang", ["item.created"])
        await http.post("/items", json={"sku": "H-1", "name": "H", "price": 1})
        await wait_until(lambda: _attempt_count(http, hook["id"], 2))
        rows = list(reversed(await attempts(http, hook["id"])))
        assert rows[0]["error"].startswith("timeout")
        assert rows[0]["response_status"] is None
        assert rows[0]["status"] == "pending"
        assert rows[0]["duration_ms"] >= 400  # the 0.5 s read timeout, not an instant failure


async def test_redirects_are_not_followed_and_big_answers_are_cut(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        redirect = await subscribe(http, f"{receiver.url}/redirect", ["item.created"])
        big = await subscribe(http, f"{receiver.url}/big", ["item.created"])
        await http.post("/items", json={"sku": "R-1", "name": "R", "price": 1})
        await wait_until(lambda: _attempt_count(http, redirect["id"], 1))
        await wait_until(lambda: _all_delivered(http, big["id"], 1))
        first = (await attempts(http, redirect["id"]))[-1]
        assert first["response_status"] == 302
        assert first["status"] == "pending"
        assert receiver.on("/ok") == []  # the redirect's target was never called


async def test_a_cookie_set_by_a_receiver_is_never_sent(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        await subscribe(http, f"{receiver.url}/cookie", ["item.created"])
        await subscribe(http, f"{receiver.url}/ok", ["item.created"])
        for n in range(3):
            await http.post("/items", json={"sku": f"K-{n}", "name": "K", "price": 1})
            # Both deliveries of this event, in whichever order the two webhooks' deliveries
            # come, before the next event: each later one is sent after a cookie was set.
            await wait_until(
                lambda n=n: len(receiver.on("/ok")) == len(receiver.on("/cookie")) == n + 1
            )
        sent = receiver.on("/cookie") + receiver.on("/ok")
        assert len(sent) == 6
        assert all("cookie" not in request.headers for request in sent)


async def test_private_addresses_are_refused_again_when_delivering(
    database_url: str, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """A webhook made while private addresses were allowed (or whose name resolved to a
    public address then, DNS rebinding) is refused at connect time by a dispatcher that
    does not allow them: the receiver never hears from it."""
    async with (
        running_app(database_url, webhook_dispatcher=False) as maker,
        await admin(maker) as http,
    ):
        hook = await subscribe(http, f"{receiver.url}/ok", ["item.created"])
    async with (
        running_app(
            database_url, webhook_allow_private=False, webhook_max_attempts=1
        ) as application,
        await admin(application) as http,
    ):
        await http.post("/items", json={"sku": "S-1", "name": "S", "price": 1})
        await wait_until(lambda: _attempt_count(http, hook["id"], 1))
        row = (await attempts(http, hook["id"]))[0]
    assert row["status"] == "failed"
    assert "127.0.0.1 is a loopback address" in row["error"]
    assert receiver.received == []


async def test_deleting_a_webhook_stops_its_deliveries(
    dispatching_app: FastAPI, receiver: Receiver
) -> None:
    async with await admin(dispatching_app) as http:
        hook = await subscribe(http, f"{receiver.url}/ok", ["item.created"])
        await http.post("/items", json={"sku": "D-1", "name": "D", "price": 1})
        await wait_until(lambda: len(receiver.on("/ok")) == 1)
        assert (await http.delete(f"/webhooks/{hook['id']}")).status_code == 204
        keep = await subscribe(http, f"{receiver.url}/flaky/0", ["item.created"])
        await http.post("/items", json={"sku": "D-2", "name": "D", "price": 1})
        await wait_until(lambda: _all_delivered(http, keep["id"], 1))
        assert len(receiver.on("/ok")) == 1


async def test_metrics_show_the_backlog_and_the_outcomes(
    database_url: str, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    async with (
        running_app(
            database_url, webhook_backoff_seconds=600, webhook_backlog_seconds=0.1
        ) as application,
        await admin(application) as http,
    ):
        failing = await subscribe(http, f"{receiver.url}/fail", ["item.created"])
        await subscribe(http, f"{receiver.url}/ok", ["item.created"])
        await http.post("/items", json={"sku": "M-1", "name": "M", "price": 1})
        await wait_until(lambda: _attempt_count(http, failing["id"], 1))

        async def scraped() -> dict[str, float]:
            text = (await http.get("/metrics")).text
            values = {}
            for line in text.splitlines():
                if line.startswith("stockroom_webhook"):
                    name, _, value = line.rpartition(" ")
                    values[name] = float(value)
            return values

        async def backlog_reported() -> bool:
            return (await scraped()).get("stockroom_webhook_backlog") == 1.0

        await wait_until(backlog_reported)  # refreshed every 0.1 s here
        values = await scraped()
        assert values['stockroom_webhook_deliveries_total{outcome="retry"}'] == 1.0
        assert values['stockroom_webhook_deliveries_total{outcome="delivered"}'] == 1.0
        assert values["stockroom_webhook_backlog_oldest_seconds"] > 0


async def test_a_fan_out_says_how_many_deliveries_it_made(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The dispatcher claims after a fan-out only if it made deliveries, and fans out less
    often while none are made: so the count must be the deliveries, not the events."""
    async with app.state.resources.sessions() as session:
        while (await queue.fan_out(session)).events:  # earlier tests' events, if any
            pass
    await subscribe(client, "https://93.184.216.34/all")
    await subscribe(client, "https://93.184.216.34/deletions", ["item.deleted"])
    for sku in ("F-1", "F-2"):
        created = await client.post("/items", json={"sku": sku, "name": "F", "price": 1})
        assert created.status_code == 201
    passed: list[queue.FanOut] = []

    async def fanned_out() -> bool:
        async with app.state.resources.sessions() as session:
            while (result := await queue.fan_out(session)).events:
                passed.append(result)
        return sum(r.events for r in passed) == 2

    await wait_until(fanned_out)
    assert sum(r.deliveries for r in passed) == 2  # both item.created, to "all" only
    async with app.state.resources.sessions() as session:
        assert await queue.fan_out(session) == queue.FanOut(0, 0)  # nothing new


async def test_an_outcome_for_a_delivery_deleted_meanwhile_is_dropped(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A webhook deleted while one of its deliveries is in flight: that attempt is not
    recorded, and the outcomes saved with it still are (the batch does not fail, which would
    leave the dispatcher retrying it forever)."""
    gone = await subscribe(client, "https://93.184.216.34/gone")
    kept = await subscribe(client, "https://93.184.216.34/kept")
    created = await client.post("/items", json={"sku": "G-1", "name": "G", "price": 1})
    assert created.status_code == 201
    claimed: list[queue.Claimed] = []
    store = app.state.resources.stores.deliveries

    async def claim_both() -> bool:
        # The event is readable once every older transaction has ended (events.log).
        async with app.state.resources.sessions() as session:
            while (await queue.fan_out(session)).events:
                pass
            claimed.extend(
                await queue.claim(session, store, 10, dt.timedelta(minutes=1), per_webhook=10)
            )
        return len(claimed) == 2

    await wait_until(claim_both)
    assert sorted(c.webhook_id for c in claimed) == sorted([gone["id"], kept["id"]])
    assert (await client.delete(f"/webhooks/{gone['id']}")).status_code == 204

    outcomes = [queue.Outcome(c, "delivered", 204, None, 5, None, utcnow()) for c in claimed]
    async with app.state.resources.sessions() as session:
        await queue.save_outcomes(session, outcomes)
    recorded = await attempts(client, kept["id"])
    assert [(a["status"], a["response_status"]) for a in recorded] == [("delivered", 204)]


async def test_a_hanging_receiver_holds_only_its_share_of_the_slots(
    database_url: str, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    """Four slots, two per webhook: while one receiver hangs on every request, another
    webhook still gets all its deliveries, and the hanging one never has more than its two
    in flight. (``client``: the tables are emptied afterwards.)"""
    async with (
        running_app(
            database_url,
            webhook_concurrency=4,
            webhook_concurrency_per_webhook=2,
            webhook_timeout=30,
            shutdown_timeout=1,
        ) as application,
        await admin(application) as http,
    ):
        await subscribe(http, f"{receiver.url}/hang", ["item.created"])
        await subscribe(http, f"{receiver.url}/ok", ["item.created"])
        for n in range(12):
            created = await http.post("/items", json={"sku": f"SH-{n}", "name": "S", "price": 1})
            assert created.status_code == 201
        # The hanging receiver's two requests may reach it after the other's twelve.
        await wait_until(lambda: len(receiver.on("/ok")) == 12 and len(receiver.on("/hang")) >= 2)
        assert len(receiver.on("/hang")) == 2


async def test_a_claim_takes_at_most_its_share_of_each_webhook(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """queue.claim with the database's store: per webhook at most ``per_webhook`` of its
    oldest due deliveries, none of a skipped webhook; a claimed delivery is not due again
    until its lease ends."""
    many = await subscribe(client, "https://93.184.216.34/many", ["item.created"])
    few = await subscribe(client, "https://93.184.216.34/few", ["item.updated"])
    skipped = await subscribe(client, "https://93.184.216.34/skipped", ["item.created"])
    for n in range(6):
        created = await client.post("/items", json={"sku": f"CL-{n}", "name": "C", "price": 1})
        assert created.status_code == 201
        if n < 2:
            patched = await client.patch(f"/items/{created.json()['id']}", json={"name": "D"})
            assert patched.status_code == 200

    async def fanned_out() -> bool:
        async with app.state.resources.sessions() as session:
            while (await queue.fan_out(session)).events:
                pass
            pending = await queue.backlog(session)
        return pending.pending == 6 + 2 + 6

    await wait_until(fanned_out)
    lease = dt.timedelta(minutes=1)
    store = app.state.resources.stores.deliveries

    async def take() -> list[str]:
        async with app.state.resources.sessions() as session:
            got = await queue.claim(session, store, 100, lease, per_webhook=4, skip=[skipped["id"]])
        return [c.webhook_id for c in got]

    first = await take()
    assert sorted(first) == sorted([many["id"]] * 4 + [few["id"]] * 2)
    assert await take() == [many["id"]] * 2  # the rest of its due deliveries
    assert await take() == []


async def test_a_webhook_gets_the_events_after_it_was_made_of_its_types(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Fan-out: one delivery per event and matching webhook; none for events older than
    the webhook, none of a type it did not ask for."""

    async def change(sku: str) -> None:
        created = await client.post("/items", json={"sku": sku, "name": "F", "price": 1})
        assert created.status_code == 201
        patched = await client.patch(f"/items/{created.json()['id']}", json={"name": "G"})
        assert patched.status_code == 200

    await change("FO-0")  # before any webhook
    every = await subscribe(client, "https://93.184.216.34/every")
    await change("FO-1")
    updates = await subscribe(client, "https://93.184.216.34/updates", ["item.updated"])
    await change("FO-2")

    async def per_webhook() -> dict[str, list[str]]:
        async with app.state.resources.sessions() as session:
            while (await queue.fan_out(session)).events:
                pass
            rows = await session.execute(
                select(Delivery.webhook_id, Event.type)
                .join(Event, Event.seq == Delivery.event_seq)
                .order_by(Event.seq)
            )
            found: dict[str, list[str]] = {}
            for webhook_id, event_type in rows:
                found.setdefault(webhook_id, []).append(event_type)
            return found

    expected = {
        every["id"]: ["item.created", "item.updated"] * 2,
        updates["id"]: ["item.updated"],
    }
    await wait_until(lambda: _equals(per_webhook, expected))


async def _equals(read: Any, expected: Any) -> bool:
    return bool(await read() == expected)
