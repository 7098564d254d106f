"""The traps users of async SQLAlchemy hit, avoided by design and proven here:
pool exhaustion, dead pooled connections, sessions shared across tasks, leaked connections
on client disconnects, and lazy loads after commit (MissingGreenlet)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests.support.apps import client_for, make_settings, start_app
from tests.support.databases import PG_ADMIN_URL
from tests.support.items import ItemFactory
from tests.support.problems import problem
from tests.support.waiting import HANG_SECONDS, not_a_hang, wait_until


@pytest.fixture
async def tiny_pool_app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, database_pool_size=1, database_max_overflow=0, database_pool_timeout=0.5
    )
    application, lifespan = await start_app(settings)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_exhausted_pool_answers_503_then_recovers(
    tiny_pool_app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory, admin_key: str
) -> None:
    item = await new_item()
    async with client_for(tiny_pool_app, admin_key) as http:
        assert (await http.get(f"/items/{item['id']}")).status_code == 200  # key now cached
        # Holds the only connection of the requests' pool.
        async with tiny_pool_app.state.resources.stores.database.connection():
            # Answered while the only connection is still held: the 0.5 s pool timeout
            # ended the wait, not a connection coming back; never a hang.
            async with not_a_hang():
                response = await http.get(f"/items/{item['id']}")
            body = problem(response, 503)
            assert body["type"].endswith("service-unavailable")
            assert response.headers["retry-after"] == "1"
        assert (await http.get(f"/items/{item['id']}")).status_code == 200


@pytest.mark.postgresql_only
async def test_connections_go_to_requests_in_the_order_they_asked(database_url: str) -> None:
    """A request that asks for a connection the instant one is given back waits behind
    those that were already waiting (asyncpg's own pool queue let it take the connection,
    and the waiter it passed queued again at the back: under load, some requests waited
    past the pool timeout while newer ones were served)."""
    settings = make_settings(
        database_url, database_pool_size=1, database_max_overflow=0, database_pool_timeout=30
    )
    application, lifespan = await start_app(settings)
    database = application.state.resources.stores.database
    served: list[str] = []

    async def read(name: str) -> None:
        async def query(connection: asyncpg.Connection) -> None:
            served.append(name)
            await connection.fetchval("SELECT 1")

        await database.read(query)

    arrived = asyncio.Event()

    async def newcomer(name: str) -> None:
        # Arrives as the connection comes back: ready to run before any waiter is woken
        # (each loop turn yields once; no event would wake it at that very instant).
        await arrived.wait()
        while database.pool_status().checked_out:  # noqa: ASYNC110
            await asyncio.sleep(0)
        await read(name)

    try:
        async with database.connection():  # the only connection, held
            waiting = [asyncio.create_task(read(f"waiter {n}")) for n in range(5)]
            late = [asyncio.create_task(newcomer(f"newcomer {n}")) for n in range(3)]
            await wait_until(lambda: len(database._turns._waiters or ()) == 5)
            arrived.set()
            await asyncio.sleep(0)  # the newcomers now poll the pool
        await asyncio.wait_for(asyncio.gather(*waiting, *late), 30)
        assert served == [f"waiter {n}" for n in range(5)] + [f"newcomer {n}" for n in range(3)]
    finally:
        await lifespan.__aexit__(None, None, None)


# The server ends every session of a database, as a restart or failover does.
TERMINATE_SESSIONS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid()"
)


@pytest.mark.postgresql_only
async def test_dead_pooled_connections_are_replaced(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item()
    assert (await client.get(f"/items/{item['id']}")).status_code == 200
    # Many pooled connections, all to be killed: the read's retry must not take the next
    # dead one (it did, about one run in three, before the pool was expired first).
    await asyncio.gather(*(client.get(f"/items/{item['id']}") for _ in range(60)))
    database = make_url(str(app.state.resources.engine.url)).database
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        killed = await admin.fetchval(TERMINATE_SESSIONS, database)
    finally:
        await admin.close()
    assert killed >= 1
    for _ in range(3):
        assert (await client.get(f"/items/{item['id']}")).status_code == 200
    # The background engine's pool (no ping, by design): a connection the kill ended fails
    # one statement at most; it is dropped with the pool's others, and the next ones work.
    failures = 0
    for _ in range(4):
        try:
            async with app.state.resources.sessions() as session:
                assert await session.scalar(text("SELECT 1")) == 1
        except DBAPIError:
            failures += 1
    assert failures <= 1


def end_sessions_unseen(database: str) -> int:
    """Every session of ``database`` ended by the server (pg_terminate_backend, as in a
    restart or failover) and gone, while this event loop is blocked: the app's pooled
    connections are dead and asyncpg has not yet read the news, as when the server restarts
    between two requests. (The kill runs on an event loop of its own, in a thread.)"""

    async def kill() -> int:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            killed: int = await admin.fetchval(TERMINATE_SESSIONS, database)
            left = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            async with not_a_hang():
                while await admin.fetchval(left, database):  # noqa: ASYNC110 (another server)
                    await asyncio.sleep(0.02)
            return killed
        finally:
            await admin.close()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, kill()).result(timeout=HANG_SECONDS)


@pytest.mark.postgresql_only
@pytest.mark.parametrize("write", ["POST /items", "PATCH /items/{id}", "POST adjustments"])
async def test_a_write_on_a_dead_pooled_connection_is_applied_once(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory, write: str
) -> None:
    """The first write after the server ended the pool's connections: BEGIN fails on the
    dead connection before anything is sent, and runs again on a new one. A 201/200, and
    the write is there exactly once."""
    item = await new_item(quantity=5)
    path = f"/items/{item['id']}"
    assert (await client.get(path)).status_code == 200  # the key is checked and cached
    database = str(make_url(str(app.state.resources.engine.url)).database)
    assert end_sessions_unseen(database) >= 1
    sku = f"DEAD-{uuid.uuid4().hex[:8]}"
    if write == "POST /items":
        response = await client.post("/items", json={"sku": sku, "name": "D", "price": 1})
        assert response.status_code == 201, response.text
        listed = await client.get("/items", params={"q": sku})
        assert [i["sku"] for i in listed.json()["data"]] == [sku]
    elif write == "PATCH /items/{id}":
        response = await client.patch(path, json={"name": "renamed"})
        assert response.status_code == 200, response.text
        after = (await client.get(path)).json()
        assert (after["name"], after["version"]) == ("renamed", item["version"] + 1)
    else:
        response = await client.post(f"{path}/adjustments", json={"delta": 2})
        assert response.status_code == 201, response.text
        after = (await client.get(path)).json()
        assert after["quantity"] == 7
        ledger = (await client.get(f"{path}/adjustments")).json()["data"]
        assert [entry["delta"] for entry in ledger].count(2) == 1


async def test_concurrent_requests_each_get_their_own_session(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    items = [await new_item() for _ in range(5)]

    async def work(n: int) -> int:
        item = items[n % len(items)]
        if n % 3 == 0:
            response = await client.patch(f"/items/{item['id']}", json={"name": f"name {n}"})
        elif n % 3 == 1:
            response = await client.get("/items", params={"sort": "-price", "limit": 3})
        else:
            response = await client.get(f"/items/{item['id']}")
        return response.status_code

    statuses = await asyncio.gather(*(work(n) for n in range(60)))
    assert set(statuses) == {200}
    versions = [(await client.get(f"/items/{i['id']}")).json()["version"] for i in items]
    # 20 PATCHes spread over 5 items, each a real change: every one counted, none lost.
    assert sum(versions) == len(items) + 20
    # Every connection comes back (on SQLite the pool is the engine's, which the event
    # hub also reads from when a commit wakes it: that read may still be running).
    await wait_until(lambda: app.state.resources.stores.database.pool_status().checked_out == 0)


async def test_abandoned_requests_return_their_connections(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item()
    for delay in (0, 0.001, 0.003, 0.01):
        tasks = [asyncio.create_task(client.get(f"/items/{item['id']}")) for _ in range(10)]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await wait_until(lambda: app.state.resources.stores.database.pool_status().checked_out == 0)
    assert (await client.get(f"/items/{item['id']}")).status_code == 200


async def test_no_lazy_load_after_commit(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    # A PATCH that changes nothing commits early and still renders the item: with expired
    # attributes this would lazy-load outside the greenlet (MissingGreenlet, a 500).
    item = await new_item(name="Same")
    response = await client.patch(f"/items/{item['id']}", json={"name": "Same"})
    assert response.status_code == 200
    assert response.json() == item
