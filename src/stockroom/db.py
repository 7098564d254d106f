"""Database plumbing shared by both databases: the table metadata, UTC timestamps, session
factories and write transactions. Engines are made per database by ``stockroom.database``
(``_postgresql.py``, ``_sqlite.py``), only in the lifespan and the CLI; nothing here runs at
import time.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = [
    "NAMING_CONVENTION",
    "PGBOUNCER_CONNECT_ARGS",
    "WRITE_OPTION",
    "Base",
    "UTCDateTime",
    "begin_write",
    "create_session_factory",
    "is_unique_violation",
    "utcnow",
    "write_connection",
]

# Explicit constraint names, so that migrations are stable and revertable on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Execution option that asks for a write transaction; on SQLite it becomes BEGIN IMMEDIATE.
WRITE_OPTION = "stockroom_write"

T = TypeVar("T")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on both databases.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones: its DATETIME stores the
    UTC wall-clock time as text (the zone is not written), and the zone is given back when
    read. Values go in and come out as aware UTC datetimes either way.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _unique_statement_name() -> str:
    return f"__stockroom_{uuid.uuid4().hex}__"


# PgBouncer in transaction mode hands each transaction to whichever server connection is
# free, so a statement prepared in one transaction may be missing in the next, or its name
# taken by another client: no prepared statement cache (asyncpg's nor SQLAlchemy's), and
# unique names for the statements asyncpg still prepares within one transaction.
PGBOUNCER_CONNECT_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unique_statement_name,
}


def create_session_factory(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions of the engine; ``info`` is copied into each one's ``Session.info``."""
    # expire_on_commit=False: objects stay readable after the service commits, without a
    # lazy reload that async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)


async def begin_write(session: AsyncSession) -> None:
    """Start the session's transaction as a write transaction (BEGIN IMMEDIATE on SQLite).

    Call it first in a service function that writes, before any read of the same
    transaction, so that the read and the write see the same state.
    """
    if not session.in_transaction():
        await session.connection(execution_options={WRITE_OPTION: True})


@asynccontextmanager
async def write_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every transaction is a write transaction (BEGIN IMMEDIATE on
    SQLite), held for a long unit of work such as an import."""
    async with engine.connect() as connection:
        await connection.execution_options(**{WRITE_OPTION: True})
        yield connection


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether an integrity error is a unique-constraint violation, on either database."""
    original = exc.orig
    if getattr(original, "sqlstate", None) == "23505":  # asyncpg: unique_violation
        return True
    return "UNIQUE constraint failed" in str(original)  # sqlite3
