"""Shared fixtures: the same API tests run against real PostgreSQL and real SQLite.

Each backend gets a fresh database, migrated with Alembic once per test session; tables are
emptied after every test. In CI (CI=true) a PostgreSQL that cannot be reached is a failure,
never a skip.

Which tests run on which backend (decided here, in pytest_collection_modifyitems, by
markers only, never by folder):

- A test that uses the ``backend`` fixture (most do, through ``database_url``, ``app`` or
  ``client``) runs once per backend it is collected for; a test that uses none runs once.
- ``sqlite`` and ``postgresql``: every such test, the two databases we ship for. Marked
  ``postgresql_only``: not on SQLite (several processes on one database, server-side kills,
  locks SQLite does not have); it is deselected there, not skipped.
- ``pgbouncer``: PostgreSQL behind a real PgBouncer in transaction mode, which changes how
  statements are prepared and how the statement timeout is set, not what the API does. Only
  tests marked ``pgbouncer`` run on it: the items, ledger and import API modules carry it
  (``pytestmark``), as they take every query path once (the import's across transactions).
  Marked also ``slow`` or ``postgresql_only`` (stress runs: stateful, several processes):
  not on PgBouncer, they add minutes and no path the API tests do not already take.

Two at a time (``make pytest``: ``pytest -n 2 --dist loadfile -m "not exclusive"``, then
``pytest -m exclusive``): much of the suite waits (servers starting, tokens expiring,
receivers answering), so two test processes share the machine's cores. Each has its own
databases (the name carries its process id), PgBouncer, ports and temporary folders. What
they share is PostgreSQL's 100 connections, so apps made here and servers the tests start
keep ``TEST_POOL_SIZE`` and ``SERVER_POOL_SIZE`` pooled connections (10, not the default
20) unless a test sets its own; and tests that need many connections at once (50 requests
each holding one, 64-way concurrency through two servers) are marked ``exclusive`` and run
after the others, alone.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from stockroom.app import create_app
from stockroom.auth import service as keys
from stockroom.db import write_connection
from stockroom.migrations import upgrade_async
from stockroom.models import Base
from stockroom.settings import Settings
from tests.openapi_check import response_checker
from tests.pgbouncer import start_pgbouncer

# Which tests run on which: see this module's docstring.
BACKENDS = ("sqlite", "postgresql", "pgbouncer")
# Database URLs that lead through PgBouncer: settings made for them say so.
PGBOUNCER_URLS: set[str] = set()
# Where tests create their throwaway PostgreSQL databases (an admin connection).
PG_ADMIN_URL = os.environ.get(
    "STOCKROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


async def _admin_connection() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN_URL, timeout=5)


async def create_pg_database() -> str:
    """A new empty PostgreSQL database; returns its SQLAlchemy URL."""
    name = f"stockroom_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = await _admin_connection()
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc!r}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


async def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    admin = await _admin_connection()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the (test, backend) pairs the module docstring rules out."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        postgresql_only = item.get_closest_marker("postgresql_only") is not None
        stress = postgresql_only or item.get_closest_marker("slow") is not None
        runs = {
            "sqlite": not postgresql_only,
            "postgresql": True,
            "pgbouncer": item.get_closest_marker("pgbouncer") is not None and not stress,
            None: True,
        }[backend]
        (keep if runs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
async def database_url(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A migrated, empty database of the backend under test."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "stockroom.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade_async(url)
        yield url
        return
    url = await create_pg_database()
    bouncer = None
    try:
        await upgrade_async(url)
        if backend == "pgbouncer":
            bouncer = start_pgbouncer(PG_ADMIN_URL, in_ci=IN_CI)
            proxied = make_url(url).set(port=bouncer.port).render_as_string(hide_password=False)
            PGBOUNCER_URLS.add(proxied)
            yield proxied
        else:
            yield url
    finally:
        if bouncer is not None:
            bouncer.stop()
        await drop_pg_database(url)


# The background pollers of an app started in-process, slowed down: every app of a test
# session (the shared one, and those tests start of their own) would otherwise wake up
# several times a second for nothing and compete for the CPU with the tests. A test of a
# poller sets its own interval (e.g. tests/events/conftest.py QUICK, tests/test_metrics.py).
# The stream hub still reads the log at once when this process commits events (and on
# PostgreSQL when any process does): the poll is only its fallback.
QUIET_BACKGROUND: dict[str, Any] = {
    "events_poll_seconds": 5.0,
    "events_prune_seconds": 3600.0,
    "idempotency_purge_seconds": 3600.0,
    "webhook_backlog_seconds": 3600.0,
    "event_loop_probe_seconds": 3600.0,
}


# Two test processes share PostgreSQL's 100 connections (see this module's docstring).
TEST_POOL_SIZE = 10
SERVER_POOL_SIZE = 10


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "log_level": "warning",
        "database_pool_size": TEST_POOL_SIZE,
        "database_pgbouncer": database_url in PGBOUNCER_URLS,
        # Tests that deliver webhooks run an app with the dispatcher on (and private
        # addresses allowed) of their own; the shared app would refuse their receivers.
        "webhook_dispatcher": False,
        **QUIET_BACKGROUND,
    }
    values.update(overrides)
    return Settings(**values)


async def start_app(settings: Settings) -> tuple[FastAPI, Any]:
    """Build an app and run its lifespan start-up; returns the app and its lifespan context."""
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return app, lifespan


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


def client_for(application: FastAPI, key: str | None = None) -> httpx.AsyncClient:
    # raise_app_exceptions=False: an unhandled error reaches the test as the 500 a client sees.
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # Every JSON answer is validated against the app's OpenAPI document (tests/openapi_check).
    hooks = {"response": [response_checker(application)]}
    return httpx.AsyncClient(
        transport=transport, base_url="http://stockroom.test", headers=headers, event_hooks=hooks
    )


async def create_key(application: FastAPI, name: str, scopes: list[str]) -> str:
    """A real API key, made the way `stockroom apikey create` makes it."""
    async with application.state.sessions() as session:
        _record, secret = await keys.create_key(session, name, scopes)
    return secret


@pytest.fixture
async def admin_key(app: FastAPI) -> str:
    return await create_key(app, f"admin-{uuid.uuid4().hex[:8]}", ["admin"])


@pytest.fixture
async def client(app: FastAPI, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app holding an `admin` key; the tables are emptied afterwards."""
    async with client_for(app, admin_key) as http:
        yield http
    await empty_tables(app)


# API keys stay: each test makes its own, with a unique name. The webhook dispatcher's
# place in the event log stays too, and the log's sequence is not restarted: as in
# production, a position in the log is never handed out twice (the apps of a test session
# follow the log across tests).
_KEPT_TABLES = {"api_keys", "webhook_dispatch_cursor"}
_UNRESTARTED = {"events"}


async def empty_tables(application: FastAPI) -> None:
    tables = [t for t in Base.metadata.sorted_tables if t.name not in _KEPT_TABLES]
    # A write transaction from the start (BEGIN IMMEDIATE on SQLite): it waits for the
    # background writers of the app instead of failing when one commits first.
    async with write_connection(application.state.engine) as connection, connection.begin():
        for table in reversed(tables):
            await connection.execute(table.delete())
        if connection.dialect.name == "sqlite":
            await connection.execute(
                text("DELETE FROM sqlite_sequence WHERE name NOT IN ('events')")
            )
        if connection.dialect.name == "postgresql":
            # Every sequence restarted in one round trip (setval, as ALTER SEQUENCE RESTART
            # does): 3 times quicker than a statement per column. (TRUNCATE ... RESTART
            # IDENTITY is slower still on tables this small, and waits for every reader.)
            columns = [
                (table.name, column.name)
                for table in tables
                if table.name not in _UNRESTARTED
                for column in table.primary_key.columns
                if column.autoincrement is True or column.autoincrement == "auto"
            ]
            await connection.execute(
                text(
                    "SELECT count(setval(seq, 1, false)) FROM (SELECT pg_get_serial_sequence"
                    "(t, c) AS seq FROM unnest(CAST(:tables AS text[]), CAST(:columns AS text[]))"
                    " AS u(t, c)) AS s WHERE seq IS NOT NULL"
                ),
                {"tables": [t for t, _ in columns], "columns": [c for _, c in columns]},
            )


ItemFactory = Callable[..., Any]


@pytest.fixture
def new_item(client: httpx.AsyncClient) -> ItemFactory:
    """POST an item (defaults filled in) and return its JSON; fails the test unless 201."""
    counter = iter(range(1, 1_000_000))

    async def make(**fields: Any) -> dict[str, Any]:
        n = next(counter)
        body = {"sku": f"SKU-{n:05d}", "name": f"Item {n}", "price": "10.00", **fields}
        response = await client.post("/items", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    return make


# How long a test lets a call that must end by itself (a timeout, a refusal, a 503) run
# before it calls it a hang. It is a bound on the wait, never a speed claim: tests show
# *why* a call ended (the lock or the connection was still held when the 503 came), not how
# fast, so a loaded machine slows them down without failing them.
HANG_SECONDS = 30.0


def not_a_hang() -> asyncio.Timeout:
    """``async with not_a_hang():`` fails the test if the block is still waiting after
    ``HANG_SECONDS`` (works for in-process apps too, where httpx's own timeouts do not)."""
    return asyncio.timeout(HANG_SECONDS)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json with ``status`` and no leaked internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    lowered = response.text.lower()
    for leak in ("traceback", "sqlalchemy", "asyncpg", "sqlite3", "select ", "insert ", 'file "'):
        assert leak not in lowered, f"problem leaks {leak!r}: {response.text}"
    return body


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
