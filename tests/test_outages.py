"""Database outages, against a real `stockroom serve` and real PostgreSQL.

The service reaches PostgreSQL through a TCP proxy run by the test. "Down" closes the proxy's
listener and resets every connection through it (what a stopped or crashed server looks
like to the service); "up" listens again. While down, requests must answer a 503 problem
as soon as their connection is refused (not after queueing out the pool timeout: the
server's log says why each failed) and /readyz a 503 at its own timeout; once up, the same
process must serve again with no restart. A statement running past
STOCKROOM_DATABASE_STATEMENT_TIMEOUT is a 503 and its connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support.apps import client_for, make_settings, start_app
from tests.support.databases import asyncpg_dsn, lock_row
from tests.support.items import ItemFactory
from tests.support.problems import problem
from tests.support.servers import cli_create_key, free_port, start_server
from tests.support.waiting import not_a_hang, wait_until

pytestmark = pytest.mark.postgresql_only


class Proxy:
    """A TCP relay to PostgreSQL that can be switched off and on."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, as from a server that died
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._writers -= {client_w, server_w}


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[Proxy]:
    url = make_url(database_url)
    relay = Proxy(url.host or "127.0.0.1", url.port or 5432)
    await relay.up()
    try:
        yield relay
    finally:
        if relay._server is not None:
            await relay.down()


async def test_outage_answers_503_fast_and_recovers_without_restart(
    proxy: Proxy, database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    # `client` is requested only so that the tables are emptied afterwards.
    proxied = make_url(database_url).set(port=proxy.port).render_as_string(False)
    # The test's own event loop runs the proxy: blocking helpers go to threads.
    server = await asyncio.to_thread(start_server, proxied, tmp_path)
    try:
        key = await asyncio.to_thread(cli_create_key, proxied, tmp_path, "write")
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            body: dict[str, Any] = {
                "sku": f"OUT-{uuid.uuid4().hex[:6]}",
                "name": "Outage",
                "price": 1,
            }
            created = await http.post("/items", json=body)
            assert created.status_code == 201, created.text
            path = created.headers["location"]
            assert (await http.get(path)).status_code == 200
            assert (await http.get("/readyz")).status_code == 200

            await proxy.down()
            started = time.monotonic()
            async with not_a_hang():
                responses = await asyncio.gather(
                    *(http.get(path) for _ in range(5)),
                    http.post(f"{path}/adjustments", json={"delta": 1}),
                )
            to_503 = time.monotonic() - started
            for response in responses:
                body = problem(response, 503)
                assert body["type"].endswith("service-unavailable")
                assert response.headers["retry-after"] == "1"
            # Fast because each failed on its refused connection, not after queueing for
            # the pool's 5 s timeout: the server logged why, under each request's id.
            refused = {response.headers["x-request-id"] for response in responses}

            def refusals_logged() -> bool:
                logged = {
                    line.get("request_id")
                    for line in server.log_lines()
                    if line.get("event") == "database unavailable"
                    and line.get("error") == "ConnectionRefusedError"
                }
                return refused <= logged

            await wait_until(refusals_logged)

            started = time.monotonic()
            async with not_a_hang():  # ends at its own 1.5 s timeout
                readiness = await http.get("/readyz")
            readyz_seconds = time.monotonic() - started
            problem(readiness, 503)
            assert (await http.get("/healthz")).status_code == 200

            await proxy.up()
            started = time.monotonic()

            async def serves() -> bool:
                return (await http.get(path)).status_code == 200

            await wait_until(serves)
            recovered = time.monotonic() - started
            assert (await http.get("/readyz")).status_code == 200
            adjusted = await http.post(f"{path}/adjustments", json={"delta": 2})
            assert adjusted.status_code == 201, adjusted.text
            assert adjusted.json()["quantity_after"] == 2  # the 503'd adjustment applied nothing
        assert server.process.poll() is None  # the same process throughout: no restart
    finally:
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
    print(
        f"\noutage: 6 requests answered 503 in {to_503:.2f} s; /readyz 503 in "
        f"{readyz_seconds:.2f} s; first 200 {recovered:.2f} s after the database came back"
    )


@pytest.fixture
async def one_connection_app(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url,
        database_pool_size=1,
        database_max_overflow=0,
        database_statement_timeout=1.0,
        auth=False,
    )
    application, lifespan = await start_app(settings)
    try:
        async with client_for(application) as http:
            http.app = application  # type: ignore[attr-defined]
            yield http
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_statement_timeout_is_a_503_and_frees_the_connection(
    one_connection_app: httpx.AsyncClient, new_item: ItemFactory, database_url: str
) -> None:
    http = one_connection_app
    item = await new_item()
    locker = await lock_row(asyncpg_dsn(database_url), item["id"])
    try:
        started = time.monotonic()
        async with not_a_hang():
            response = await http.patch(f"/items/{item['id']}", json={"name": "Waits for the lock"})
        waited = time.monotonic() - started
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    body = problem(response, 503)
    assert body["type"].endswith("service-unavailable")
    assert response.headers["retry-after"] == "1"
    # The 1 s statement timeout ended it, not the lock holder: the answer came while the
    # lock was still held (the ROLLBACK above comes after it), and not before the timeout.
    assert waited >= 1.0
    application = http.app  # type: ignore[attr-defined]
    # Freed: (the event log's readers borrow the pool's one connection for a moment now and
    # then, so look again rather than at one instant).
    database = application.state.resources.stores.database  # the requests' pool
    await wait_until(lambda: database.pool_status().checked_out == 0)
    # The pool's only connection works again: the PATCH now succeeds.
    again = await http.patch(f"/items/{item['id']}", json={"name": "After the timeout"})
    assert again.status_code == 200, again.text
    print(f"\nstatement timeout: 503 after {waited:.2f} s (limit 1 s); connection reused")


@pytest.mark.pgbouncer
async def test_statement_timeout_and_jit_are_set_on_every_connection(database_url: str) -> None:
    # JIT off: compiling a plan's expressions cost a 5,000,000-item export 60-170 ms before its
    # first row (issue #25); PostgreSQL's default is on.
    settings = make_settings(database_url, database_statement_timeout=2.5)
    application, lifespan = await start_app(settings)
    shown_sql = "SELECT current_setting('statement_timeout'), current_setting('jit')"
    try:
        async with application.state.resources.engine.connect() as connection:
            shown = tuple((await connection.execute(text(shown_sql))).one())
        # ... and on the requests' pool (asyncpg), which runs the hot statements.
        shown_requests = tuple(
            await application.state.resources.stores.database.read(
                lambda driver: driver.fetchrow(shown_sql)
            )
        )
    finally:
        await lifespan.__aexit__(None, None, None)
    assert shown == shown_requests == ("2500ms", "off")
