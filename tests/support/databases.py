"""The test databases: throwaway PostgreSQL databases, emptying the tables after a test, and
a row lock held from a connection of the test's own.

In CI (CI=true) a PostgreSQL that cannot be reached is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from stockroom.db import write_connection
from stockroom.models import Base

# Where tests create their throwaway PostgreSQL databases (an admin connection).
PG_ADMIN_URL = os.environ.get(
    "STOCKROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
# Database URLs that lead through PgBouncer (the ``database_url`` fixture adds them): settings
# and servers made for them say so.
PGBOUNCER_URLS: set[str] = set()


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
    async with (
        write_connection(application.state.resources.engine) as connection,
        connection.begin(),
    ):
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


def asyncpg_dsn(database_url: str) -> str:
    """The plain ``postgresql://`` form of a test database's URL, for asyncpg.connect."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def lock_row(dsn: str, item_id: int) -> asyncpg.Connection:
    """A connection of the test's own holding item ``item_id``'s row locked (FOR UPDATE) in
    an open transaction, until the test rolls it back or closes it."""
    connection = await asyncpg.connect(dsn)
    await connection.execute("BEGIN")
    await connection.execute("SELECT 1 FROM items WHERE id = $1 FOR UPDATE", item_id)
    return connection
