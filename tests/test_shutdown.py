"""Graceful shutdown of a real `stockroom serve`: SIGTERM during 50 slow requests.

The requests are stock adjustments on two items whose rows the test holds locked from its
own PostgreSQL connection, so all 50 are really in flight (each waiting inside its
transaction) when the signal arrives. The lock on item A is released once the server has
stopped accepting: its 25 requests must complete (201). Item B stays locked past
STOCKROOM_SHUTDOWN_TIMEOUT: its 25 requests must get a clean 503 problem and apply nothing.
No response may be cut, the process must stop accepting at once (before any of the 50 is
answered) and exit 0, and the ledger must explain both items' quantities exactly.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from tests.support.apps import create_key
from tests.support.databases import asyncpg_dsn, lock_row
from tests.support.problems import problem
from tests.support.servers import start_server
from tests.support.waiting import wait_until

# 60 connections of its own (50 requests each hold one): alone (tests/conftest.py).
pytestmark = [pytest.mark.postgresql_only, pytest.mark.exclusive]

PER_ITEM = 25
SHUTDOWN_TIMEOUT = 3


async def waiting_on_locks(connection: asyncpg.Connection, database: str) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = $1 AND application_name = 'stockroom' AND wait_event_type = 'Lock'",
        database,
    )
    return count


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


async def test_sigterm_finishes_in_flight_requests_and_503s_the_rest(
    app: FastAPI, database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    # `client` is requested only so that the tables are emptied afterwards.
    server = start_server(
        database_url,
        tmp_path,
        env_extra={
            "STOCKROOM_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
            "STOCKROOM_DATABASE_POOL_SIZE": "60",
        },
    )
    port = int(server.url.rsplit(":", 1)[1])
    # Made in this process (`stockroom apikey create` is tested in tests/auth/test_cli.py).
    key = await create_key(app, f"drain-{uuid.uuid4().hex[:8]}", ["write"])
    dsn = asyncpg_dsn(database_url)
    database = str(make_url(database_url).database)
    limits = httpx.Limits(max_connections=2 * PER_ITEM + 5)
    headers = {"Authorization": f"Bearer {key}"}
    # The test's own PostgreSQL connections (the two row locks, one that watches), closed
    # and the requests' tasks ended whatever happens: a failure here must not leave rows
    # locked for the teardown nor tasks whose errors no one reads.
    held: list[asyncpg.Connection] = []
    tasks: list[asyncio.Task[httpx.Response]] = []
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=30, limits=limits
        ) as http:
            items = []
            for name in ("A", "B"):
                body: dict[str, Any] = {
                    "sku": f"DRAIN-{name}-{uuid.uuid4().hex[:6]}",
                    "name": name,
                    "price": 1,
                }
                created = await http.post("/items", json={**body, "quantity": 10})
                assert created.status_code == 201, created.text
                items.append(created.json()["id"])
            item_a, item_b = items
            lock_a, lock_b = await lock_row(dsn, item_a), await lock_row(dsn, item_b)
            held += [lock_a, lock_b]
            watcher = await asyncpg.connect(dsn)
            held.append(watcher)

            async def adjust(item_id: int, n: int) -> httpx.Response:
                payload = {"delta": 1, "reason": f"drain {n}"}
                return await http.post(f"/items/{item_id}/adjustments", json=payload)

            tasks += [
                asyncio.create_task(adjust(item_id, n))
                for item_id in (item_a, item_b)
                for n in range(PER_ITEM)
            ]
            for _ in range(200):  # until every request waits on a row lock in PostgreSQL
                if await waiting_on_locks(watcher, database) == 2 * PER_ITEM:
                    break
                await asyncio.sleep(0.05)
            assert await waiting_on_locks(watcher, database) == 2 * PER_ITEM

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            def stopped_accepting_first() -> bool:
                # It stops accepting at once, before its drain ends: while it still
                # accepts, none of the 50 has been answered (A's rows are still locked,
                # B's answers come only when the shutdown timeout ends).
                assert not any(task.done() for task in tasks), "answered while accepting"
                return refuses_connections(port)

            await wait_until(stopped_accepting_first)
            stopped_accepting = time.monotonic() - signalled
            assert not any(task.done() for task in tasks)

            # The server refuses connections: it is shutting down, with all 50 in flight.
            await lock_a.execute("ROLLBACK")  # A's requests may now finish
            responses_a = await asyncio.gather(*tasks[:PER_ITEM])
            # B's stay locked until the shutdown timeout cancels them.
            responses_b = await asyncio.gather(*tasks[PER_ITEM:])
            answered_b = time.monotonic() - signalled
            await lock_b.execute("ROLLBACK")

        exit_code = await asyncio.to_thread(server.process.wait, 30)
        exited = time.monotonic() - signalled
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in held:
            await connection.close()  # rolls back what it holds
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    assert exit_code == 0, server.log.read_text()[-3000:]
    for response in responses_a:
        assert response.status_code == 201, response.text
        assert response.json()["item_id"] == item_a
    for response in responses_b:
        body = problem(response, 503)
        assert body["type"].endswith("service-unavailable")
        assert response.headers["retry-after"] == "1"
    # The 503s came when the shutdown timeout ended, not before.
    assert answered_b >= SHUTDOWN_TIMEOUT - 0.5

    # Nothing half-applied: A got exactly its 25 adjustments, B none, and each ledger
    # explains its quantity.
    connection = await asyncpg.connect(dsn)
    try:
        for item_id, expected in ((item_a, 10 + PER_ITEM), (item_b, 10)):
            quantity = await connection.fetchval(
                "SELECT quantity FROM items WHERE id = $1", item_id
            )
            ledger = await connection.fetchval(
                "SELECT sum(delta) FROM adjustments WHERE item_id = $1", item_id
            )
            assert quantity == ledger == expected
        reasons = await connection.fetch(
            "SELECT reason FROM adjustments WHERE item_id = $1 AND reason LIKE 'drain %'", item_a
        )
        assert sorted(r["reason"] for r in reasons) == sorted(f"drain {n}" for n in range(PER_ITEM))
    finally:
        await connection.close()
    lines = server.log_lines()
    assert any(line.get("event") == "stopped" for line in lines)
    print(
        f"\nshutdown: stopped accepting {stopped_accepting:.2f} s after SIGTERM; "
        f"{PER_ITEM} finished 201; {PER_ITEM} answered 503 at {answered_b:.2f} s "
        f"(timeout {SHUTDOWN_TIMEOUT} s); exit 0 at {exited:.2f} s"
    )
