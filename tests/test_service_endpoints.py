"""/ping, /healthz, /readyz: also when the database does not answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.apps import client_for, make_settings, start_app
from tests.support.problems import problem
from tests.support.waiting import not_a_hang


async def test_ping(client: httpx.AsyncClient) -> None:
    response = await client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"ping": "pong"}


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung database)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.fixture
def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


async def _client_for_url(url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(url, database_connect_timeout=1.0, database_pool_timeout=1.0)
    application, lifespan = await start_app(settings)
    try:
        # A key must be looked up in the database, so item requests reach it.
        async with client_for(application, "sr_not-checked-before-the-database") as http:
            yield http
    finally:
        await lifespan.__aexit__(None, None, None)


@pytest.mark.parametrize("kind", ["silent", "refused"])
async def test_unreachable_database(kind: str, silent_server: int, closed_port: int) -> None:
    port = silent_server if kind == "silent" else closed_port
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/stockroom"
    async for http in _client_for_url(url):
        # Its own 1.5 s timeout ends the check: a 503, never a hang.
        async with not_a_hang():
            readiness = await http.get("/readyz")
        problem(readiness, 503)

        # The process itself is fine.
        assert (await http.get("/healthz")).status_code == 200

        # Bounded by the connect timeout (1 s here): a 503, never a hang.
        async with not_a_hang():
            responses = await asyncio.gather(*(http.get("/items/1") for _ in range(5)))
        for response in responses:
            body = problem(response, 503)
            assert body["type"].endswith("service-unavailable")
            assert response.headers["retry-after"] == "1"
