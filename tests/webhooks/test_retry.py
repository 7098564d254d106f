"""`POST /webhooks/{id}/deliveries/{delivery_id}/retry`: a failed or pending delivery gets a
new attempt now, made by the dispatcher and shown in the deliveries list; with real
receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.apps import client_for, create_key
from tests.support.problems import problem
from tests.support.waiting import wait_until
from tests.webhooks.dispatching import admin, running_app, subscribe
from tests.webhooks.receiver import Receiver


async def attempts(http: httpx.AsyncClient, webhook_id: str) -> list[dict[str, Any]]:
    """The webhook's deliveries list (attempts), oldest first."""
    response = await http.get(f"/webhooks/{webhook_id}/deliveries?limit=500")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return list(reversed(data))


async def retry(http: httpx.AsyncClient, webhook_id: str, delivery_id: object) -> httpx.Response:
    return await http.post(f"/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")


async def test_a_failed_delivery_is_retried_once_the_receiver_is_fixed(
    database_url: str, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    # Two attempts at most; the receiver answers 503 to the first two requests of an event
    # (it is broken), then 200 (fixed).
    async with (
        running_app(database_url, webhook_max_attempts=2) as application,
        await admin(application) as http,
    ):
        hook = await subscribe(http, f"{receiver.url}/flaky/2", ["item.created"])
        await http.post("/items", json={"sku": "R-1", "name": "R", "price": 1})

        async def tried(count: int) -> bool:
            return len(await attempts(http, hook["id"])) >= count

        await wait_until(lambda: tried(2))
        rows = await attempts(http, hook["id"])
        assert [r["status"] for r in rows] == ["pending", "failed"]
        assert rows[-1]["next_attempt_at"] is None
        await asyncio.sleep(0.3)  # many backoffs long: given up, nothing more is sent
        assert len(receiver.on("/flaky/2")) == 2

        answer = await retry(http, hook["id"], rows[-1]["id"])
        assert answer.status_code == 202, answer.text
        assert answer.content == b""
        await wait_until(lambda: tried(3))
        rows = await attempts(http, hook["id"])
        assert [r["attempt"] for r in rows] == [1, 2, 3]
        assert [r["status"] for r in rows] == ["pending", "failed", "delivered"]
        assert rows[-1]["response_status"] == 200
        assert len({r["event_id"] for r in rows}) == 1
        sent = receiver.on("/flaky/2")
        assert len(sent) == 3
        assert len({r.headers["webhook-id"] for r in sent}) == 1

        # Delivered: a retry (through any attempt of it) is refused, nothing is sent.
        for row in rows:
            refused = problem(await retry(http, hook["id"], row["id"]), 409)
            assert refused["type"].endswith("already-delivered")
        await asyncio.sleep(0.3)
        assert len(receiver.on("/flaky/2")) == 3
        assert len(await attempts(http, hook["id"])) == 3


async def test_a_pending_delivery_is_sent_now_instead_of_after_its_backoff(
    database_url: str, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    async with (
        running_app(database_url, webhook_backoff_seconds=3600) as application,
        await admin(application) as http,
    ):
        hook = await subscribe(http, f"{receiver.url}/flaky/1", ["item.created"])
        await http.post("/items", json={"sku": "R-2", "name": "R", "price": 1})

        async def tried(count: int) -> bool:
            return len(await attempts(http, hook["id"])) >= count

        await wait_until(lambda: tried(1))
        first = (await attempts(http, hook["id"]))[0]
        assert first["status"] == "pending"  # next try in about an hour
        assert (await retry(http, hook["id"], first["id"])).status_code == 202
        await wait_until(lambda: tried(2))
        rows = await attempts(http, hook["id"])
        assert [(r["attempt"], r["status"]) for r in rows] == [(1, "pending"), (2, "delivered")]


async def test_unknown_or_foreign_deliveries_are_404(
    database_url: str, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    async with (
        running_app(database_url, webhook_max_attempts=1) as application,
        await admin(application) as http,
    ):
        failing = await subscribe(http, f"{receiver.url}/fail", ["item.created"])
        other = await subscribe(http, f"{receiver.url}/ok", ["item.updated"])
        await http.post("/items", json={"sku": "R-3", "name": "R", "price": 1})

        async def failed() -> bool:
            rows = await attempts(http, failing["id"])
            return bool(rows) and rows[-1]["status"] == "failed"

        await wait_until(failed)
        attempt_id = (await attempts(http, failing["id"]))[-1]["id"]
        # Another webhook's delivery, an unknown one, an unknown webhook: 404.
        problem(await retry(http, other["id"], attempt_id), 404)
        problem(await retry(http, failing["id"], attempt_id + 1000), 404)
        problem(await retry(http, str(uuid.uuid4()), attempt_id), 404)
        # Not an id at all: 422, as for items.
        problem(await retry(http, failing["id"], "abc"), 422)
        problem(await retry(http, failing["id"], 0), 422)
        # Webhooks are an admin matter.
        writer = await create_key(application, f"w-{uuid.uuid4().hex[:8]}", ["write"])
        async with client_for(application, writer) as not_admin:
            problem(await retry(not_admin, failing["id"], attempt_id), 403)
        # The failed one itself is retried (and fails again: its one more attempt).
        assert (await retry(http, failing["id"], attempt_id)).status_code == 202

        async def twice() -> bool:
            return len(await attempts(http, failing["id"])) == 2

        await wait_until(twice)
        rows = await attempts(http, failing["id"])
        assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "failed")]


def test_the_document_declares_the_retry(app: FastAPI) -> None:
    retried = app.openapi()["paths"]["/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"]
    operation = retried["post"]
    assert operation["operationId"] == "retryDelivery"
    assert "content" not in operation["responses"]["202"]
    assert set(operation["responses"]) >= {"202", "401", "403", "404", "409", "422"}
