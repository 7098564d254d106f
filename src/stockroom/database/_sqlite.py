"""SQLite: connections of the process's one engine (aiosqlite behind SQLAlchemy).

SQLite runs in the process, so there is no round trip to save: the stores use SQLAlchemy
Core on the engine's connections. A write transaction takes the database's write lock up
front (``BEGIN IMMEDIATE``, see ``db.write_connection``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from stockroom.database import PoolStatus, ReplicaStatus
from stockroom.db import WRITE_OPTION, write_connection
from stockroom.settings import Settings

__all__ = ["SqliteDatabase", "create_engine", "unusable_reason"]

# SQLite waits this long for another writer's lock before it answers "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5_000

T = TypeVar("T")


def unusable_reason(settings: Settings) -> str | None:
    """Why the database file cannot be opened, seen before trying: its folder is missing
    (aiosqlite, failing to open a file, leaves a thread that prints a traceback once the
    event loop has closed)."""
    file = settings.database.database
    if file not in (None, "", ":memory:") and not Path(file).parent.is_dir():
        return f"the folder {str(Path(file).parent)!r} does not exist"
    return None


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's engine on SQLite: every statement goes through it."""
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
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


class SqliteDatabase:
    keeps_sessions = True

    def __init__(self, engine: AsyncEngine, *, on_commit: Callable[[], None]) -> None:
        self._engine = engine
        self._on_commit = on_commit

    async def start(self) -> None:
        """Nothing to open: the engine's pool is the lifespan's."""

    async def close(self) -> None:
        """Nothing to close: the lifespan disposes of the engine."""

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        async with write_connection(self._engine) as connection:
            yield connection

    @asynccontextmanager
    async def write(self, connection: AsyncConnection) -> AsyncIterator[None]:
        if connection.in_transaction():
            async with connection.begin_nested():
                yield
            return
        async with connection.begin():
            yield
        self._on_commit()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.connection() as connection, self.write(connection):
            yield connection

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self.transaction() as connection:
            return await work(connection)

    async def read(self, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._engine.connect() as connection:
            return await query(connection)

    async def read_caught_up(self, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """SQLite has no replicas: the one database answers."""
        return await self.read(query)

    def replica_status(self) -> list[ReplicaStatus]:
        return []

    def replica_engine(self) -> AsyncEngine | None:
        return None

    def read_routes(self) -> Mapping[tuple[str, str], int]:
        return {}

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """SQLite has no notifications: another process's commits are found by polling."""
        await asyncio.Event().wait()

    def pool_status(self) -> PoolStatus:
        pool: Any = self._engine.pool
        overflow = max(0, pool.overflow())  # QueuePool counts from -size up
        return PoolStatus(
            pool.size(), pool.size() + pool._max_overflow, pool.checkedout(), overflow
        )
