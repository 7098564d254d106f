"""Every error is problem+json with the request id, and nothing internal leaks."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from stockroom.migrations import upgrade_async
from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.databases import create_pg_database, drop_pg_database
from tests.support.problems import problem


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/no/such/thing"), 404)
    assert body["type"].endswith("not-found")


async def test_wrong_method_is_405_with_every_allowed_method(client: httpx.AsyncClient) -> None:
    response = await client.put("/items")
    problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD, POST"
    response = await client.post("/items/1")
    problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH"


async def test_malformed_json_is_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items", content=b'{"sku": "A", "name":', headers={"content-type": "application/json"}
    )
    body = problem(response, 422)
    assert body["errors"][0]["msg"] == "The body is not valid JSON."


async def test_validation_problem_lists_each_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"sku": "bad sku!", "price": "x"})
    body = problem(response, 422)
    locs = sorted(tuple(e["loc"]) for e in body["errors"])
    assert locs == [("body", "name"), ("body", "price"), ("body", "sku")]
    assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])
    assert "body.sku" in body["detail"]


async def test_oversized_body_is_413_by_content_length(client: httpx.AsyncClient) -> None:
    big = b'{"sku": "A", "name": "' + b"x" * 2_000_000 + b'", "price": 1}'
    body = problem(await client.post("/items", content=big), 413)
    assert body["type"].endswith("content-too-large")
    assert (await client.get("/items")).json()["data"] == []


async def test_oversized_streamed_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku": "A", "name": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'", "price": 1}'

    response = await client.post(
        "/items", content=chunks(), headers={"content-type": "application/json"}
    )
    problem(response, 413)
    assert (await client.get("/items")).json()["data"] == []


@pytest.fixture
async def app_with_a_bug(database_url: str) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url))

    async def explode() -> None:
        raise RuntimeError("secret internal detail: password=hunter2")

    async def time_out() -> None:
        raise TimeoutError("an outbound call, not the database")

    async def refused() -> None:
        raise ConnectionRefusedError("some other service")

    application.add_api_route("/explode", explode, include_in_schema=False)
    application.add_api_route("/time-out", time_out, include_in_schema=False)
    application.add_api_route("/refused", refused, include_in_schema=False)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_unexpected_error_is_500_problem_without_internals(
    app_with_a_bug: FastAPI,
) -> None:
    async with client_for(app_with_a_bug) as http:
        response = await http.get("/explode", headers={"X-Request-ID": "trace-me-1"})
    body = problem(response, 500)
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["type"].endswith("internal-error")
    assert response.headers["x-request-id"] == "trace-me-1"


async def test_request_id_is_echoed_when_sane(client: httpx.AsyncClient) -> None:
    for given in ("abc-123", "A.b_c-9", "x" * 128):
        response = await client.get("/ping", headers={"X-Request-ID": given})
        assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "semi;colon", "ünï", "a/b"])
async def test_insane_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/ping", headers={b"X-Request-ID": given.encode()})
    returned = response.headers["x-request-id"]
    assert returned != given
    assert 1 <= len(returned) <= 128


async def test_request_id_is_fresh_per_request_and_on_errors(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/ping")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert "x-request-id" in (await client.get("/nope")).headers
    big = b"x" * 2_000_000
    assert "x-request-id" in (await client.post("/items", content=big)).headers


@pytest.mark.parametrize("path", ["/time-out", "/refused"])
async def test_timeouts_and_refusals_not_of_the_database_are_500(
    app_with_a_bug: FastAPI, path: str
) -> None:
    # Not "the database is unavailable, retry": nothing says a retry would help.
    async with client_for(app_with_a_bug) as http:
        response = await http.get(path)
    body = problem(response, 500)
    assert body["type"].endswith("internal-error")
    assert "retry-after" not in response.headers


@pytest.fixture
async def fresh_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of this test's own (its tables get dropped)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
        await upgrade_async(url)
        yield url
        return
    if backend == "pgbouncer":
        pytest.skip("PostgreSQL itself is enough")
    url = await create_pg_database()
    try:
        await upgrade_async(url)
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture
async def running_app(fresh_database: str) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(fresh_database))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def _drop(application: FastAPI, table: str) -> None:
    engine = application.state.resources.engine
    cascade = " CASCADE" if engine.dialect.name == "postgresql" else ""
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE {table}{cascade}"))


def _broken(response: httpx.Response) -> None:
    """A 500 problem that says nothing of the cause, and no invitation to retry."""
    body = problem(response, 500)
    assert body["type"].endswith("internal-error")
    assert "retry-after" not in response.headers
    for leak in ("no such table", "does not exist", "idempotency_keys", "undefined"):
        assert leak not in response.text.lower()


async def test_a_missing_table_is_a_500_not_a_503(running_app: FastAPI) -> None:
    """A broken deployment (here: a table dropped under the running app) is not an outage:
    a 503 would tell clients to retry forever. (On SQLite a missing table is an
    OperationalError, the class that also means "database busy".)"""
    key = await create_key(running_app, "broken", ["write"])
    async with client_for(running_app, key) as http:
        item = {"sku": "T-1", "name": "Table", "price": "1.00"}
        created = await http.post("/items", json=item)
        assert created.status_code == 201, created.text

        await _drop(running_app, "idempotency_keys")
        again = {"sku": "T-2", "name": "Table", "price": "1.00"}
        _broken(await http.post("/items", json=again, headers={"Idempotency-Key": "k-1"}))
        # Without a key the table is not needed: the rest of the service still works.
        assert (await http.post("/items", json=again)).status_code == 201

        await _drop(running_app, "items")
        _broken(await http.get("/items"))
        _broken(await http.get("/items/1"))


async def test_sqlite_busy_past_its_timeout_is_a_503(
    running_app: FastAPI, fresh_database: str, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's own lock")
    key = await create_key(running_app, "busy", ["write"])
    holder = sqlite3.connect(make_url(fresh_database).database or "", timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        async with client_for(running_app, key) as http:
            response = await http.post(
                "/items", json={"sku": "B-1", "name": "Busy", "price": "1.00"}
            )
    finally:
        holder.rollback()
        holder.close()
    body = problem(response, 503)
    assert body["type"].endswith("service-unavailable")
    assert response.headers["retry-after"] == "1"
