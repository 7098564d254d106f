"""SQLite: connections of the process's one engine (aiosqlite behind SQLAlchemy).

SQLite runs in the process, so there is no round trip to save: the stores use SQLAlchemy
Core on the engine's connections. A write transaction takes the database's write lock up
front (``BEGIN IMMEDIATE``, see ``db.write_connection``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stockroom.database import PoolStatus
from stockroom.db import write_connection

__all__ = ["SqliteDatabase"]

T = TypeVar("T")


class SqliteDatabase:
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

    async def read(self, query: Callable[[Any], Awaitable[T]]) -> T:
        async with self._engine.connect() as connection:
            return await query(connection)

    def pool_status(self) -> PoolStatus:
        pool: Any = self._engine.pool
        overflow = max(0, pool.overflow())  # QueuePool counts from -size up
        return PoolStatus(
            pool.size(), pool.size() + pool._max_overflow, pool.checkedout(), overflow
        )
