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
20: tests/support/apps.py and tests/support/servers.py) unless a test sets its own; and
tests that need many connections at once (50 requests each holding one, 64-way concurrency
through two servers) are marked ``exclusive`` and run after the others, alone.

The helpers the tests import (apps, databases, servers, waiting, ...) are in tests/support/;
this module holds only the fixtures and the pytest hooks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from stockroom.migrations import upgrade_async
from tests.support.apps import client_for, create_key, make_settings, start_app
from tests.support.databases import (
    IN_CI,
    PG_ADMIN_URL,
    PGBOUNCER_URLS,
    create_pg_database,
    drop_pg_database,
    empty_tables,
)
from tests.support.items import ItemFactory, item_factory
from tests.support.pgbouncer import PgBouncer, start_pgbouncer

# Throwaway PostgreSQL servers of a test's own (to crash, restart, replicate): the fixtures.
from tests.support.pgservers import pg_servers, pg_template  # noqa: F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the (test, backend) pairs the module docstring rules out."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
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


# Which tests run on which backend: see this module's docstring.
@pytest.fixture(scope="session", params=["sqlite", "postgresql", "pgbouncer"])
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
    bouncer: PgBouncer | None = None
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


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    application, lifespan = await start_app(make_settings(database_url))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def admin_key(app: FastAPI) -> str:
    return await create_key(app, f"admin-{uuid.uuid4().hex[:8]}", ["admin"])


@pytest.fixture
async def client(app: FastAPI, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app holding an `admin` key; the tables are emptied afterwards."""
    async with client_for(app, admin_key) as http:
        yield http
    await empty_tables(app)


@pytest.fixture
def new_item(client: httpx.AsyncClient) -> ItemFactory:
    """POST an item (defaults filled in) and return its JSON; fails the test unless 201."""
    return item_factory(client)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
