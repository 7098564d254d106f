"""Database plumbing: the table metadata, the engine and session factories.

Only the application lifespan (and the CLI) creates an engine; nothing here runs at import
time. The same code serves PostgreSQL (asyncpg) and SQLite (aiosqlite); the few places where
they differ are in this module.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.types import TypeDecorator

from stockroom.settings import Settings

__all__ = [
    "NAMING_CONVENTION",
    "PGBOUNCER_CONNECT_ARGS",
    "Base",
    "UTCDateTime",
    "begin_write",
    "create_engine",
    "create_read_engine",
    "create_session_factory",
    "is_unique_violation",
    "on_postgresql",
    "read",
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

# SQLite waits this long for another writer's lock before it answers "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5_000

# Execution option that asks for a write transaction; on SQLite it becomes BEGIN IMMEDIATE.
_WRITE_OPTION = "stockroom_write"

T = TypeVar("T")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as UTC
    text and given their zone back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    """The one engine of a process. Its pool is bounded so overload is a 503, not a pile-up."""
    if settings.is_sqlite:
        return _create_sqlite_engine(settings)
    statement_ms = int(settings.database_statement_timeout * 1000)
    connect_args: dict[str, Any] = {
        "timeout": settings.database_connect_timeout,
        # The client-side backstop if the server never answers (a dead network).
        "command_timeout": settings.database_statement_timeout + 5,
        "server_settings": {
            "statement_timeout": str(statement_ms),
            "application_name": "stockroom",
        },
    }
    if settings.database_pgbouncer:
        connect_args.update(PGBOUNCER_CONNECT_ARGS)
        # PgBouncer refuses unknown startup parameters, and a session SET would stick to
        # one server connection only; the timeout is set in every transaction instead.
        connect_args["server_settings"] = {"application_name": "stockroom"}
    engine = create_async_engine(
        settings.database,
        # The requests' statements run on the asyncpg pool of database/_postgresql.py; this
        # engine serves the background work and the admin endpoints.
        pool_size=settings.database_background_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout,
        # No pool_pre_ping: it costs every request a round trip (a third of a GET's). A
        # connection the server closed is replaced at checkout instead (_on_checkout), and
        # a read that meets one anyway runs again on a new connection (see `read`).
        pool_recycle=1800,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "checkout", _on_checkout)
    if settings.database_pgbouncer:
        set_timeout = f"SET LOCAL statement_timeout = {statement_ms}"

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql(set_timeout)

    return engine


def _on_checkout(
    dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    # asyncpg notices at once when the server closes a connection (restart, failover,
    # pg_terminate_backend, an idle timeout): the pool then opens a new one instead of
    # handing out a dead one. Free, unlike a ping.
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server while in the pool")


def create_read_engine(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """The engine for reads: the same pool, but on PostgreSQL every statement runs on its
    own (autocommit). A single statement sees the latest committed data either way (as in a
    READ COMMITTED transaction); without a transaction it saves the BEGIN and ROLLBACK round
    trips. Not on SQLite (no round trips to save) nor through PgBouncer (where the statement
    timeout is set per transaction)."""
    if settings.is_sqlite or settings.database_pgbouncer:
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def read(engine: AsyncEngine, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``query`` on a pooled connection of ``engine`` (a read engine), held only while
    it runs. If the connection died since the checkout (the server closed it an instant
    before), the pool drops its old connections and the read runs once more on a new one:
    safe, as a read changes nothing."""
    try:
        async with engine.connect() as connection:
            return await query(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    async with engine.connect() as connection:
        return await query(connection)


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


def _create_sqlite_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        settings.database,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Temporary tables (an import's list of skus seen) on disk, not in memory.
        cursor.execute("PRAGMA temp_store=FILE")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A write transaction takes SQLite's write lock up front (BEGIN IMMEDIATE): two
        # writers then queue on busy_timeout instead of one failing half-way with
        # "database is locked" when it upgrades a read lock.
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


def create_session_factory(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions of the engine; ``info`` is copied into each one's ``Session.info``."""
    # expire_on_commit=False: objects stay readable after the service commits, without a
    # lazy reload that async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)


def on_postgresql(connection: AsyncConnection | AsyncSession) -> bool:
    """Whether this session or connection talks to PostgreSQL (else SQLite)."""
    bind = connection if isinstance(connection, AsyncConnection) else connection.get_bind()
    return bind.dialect.name == "postgresql"


async def begin_write(session: AsyncSession) -> None:
    """Start the session's transaction as a write transaction (BEGIN IMMEDIATE on SQLite).

    Call it first in a service function that writes, before any read of the same
    transaction, so that the read and the write see the same state.
    """
    if not session.in_transaction():
        await session.connection(execution_options={_WRITE_OPTION: True})


@asynccontextmanager
async def write_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every transaction is a write transaction (BEGIN IMMEDIATE on
    SQLite), held for a long unit of work such as an import."""
    async with engine.connect() as connection:
        await connection.execution_options(**{_WRITE_OPTION: True})
        yield connection


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether an integrity error is a unique-constraint violation, on either database."""
    original = exc.orig
    if getattr(original, "sqlstate", None) == "23505":  # asyncpg: unique_violation
        return True
    return "UNIQUE constraint failed" in str(original)  # sqlite3
