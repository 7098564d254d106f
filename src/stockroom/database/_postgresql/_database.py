"""The :class:`~stockroom.database.Database` of PostgreSQL: the stores' connections and
transactions, put together from the request pool's leases (``_pool.py``), what a driver
error means (``_failures.py``) and what differs through PgBouncer (``_pgbouncer.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from stockroom.database import PoolStatus
from stockroom.database._postgresql._failures import TRANSIENT_AS_503, is_broken
from stockroom.database._postgresql._listen import listen
from stockroom.database._postgresql._pool import Lease, RequestPool, TransactionLease
from stockroom.errors import UnavailableError
from stockroom.settings import Settings

__all__ = ["PostgresDatabase"]

T = TypeVar("T")


class PostgresDatabase:
    """The stores' connections and transactions on PostgreSQL; the requests' pool is opened
    by ``start`` and closed by ``close`` (the lifespan)."""

    def __init__(self, settings: Settings, *, on_commit: Callable[[], None]) -> None:
        self._settings = settings
        self._on_commit = on_commit
        self._pool = RequestPool(settings)
        self._turns = self._pool.turns  # the pool's queue (tests watch its waiters)
        self._pgbouncer = settings.database_pgbouncer
        # Through PgBouncer each transaction may run on another server connection.
        self.keeps_sessions = not self._pgbouncer

    async def start(self) -> None:
        await self._pool.open(_dsn(self._settings))

    async def close(self) -> None:
        await self._pool.close()

    def pool_status(self) -> PoolStatus:
        return self._pool.status()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; every driver error inside the block is translated."""
        with TRANSIENT_AS_503:
            async with Lease(self._pool) as connection:
                yield connection

    @asynccontextmanager
    async def write(self, connection: asyncpg.Connection) -> AsyncIterator[None]:
        nested = connection.is_in_transaction()
        with TRANSIENT_AS_503:
            async with connection.transaction():
                if self._pool.set_timeout is not None and not nested:  # through PgBouncer
                    await connection.execute(self._pool.set_timeout)
                yield
        if not nested:
            self._on_commit()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with TRANSIENT_AS_503:
            async with TransactionLease(self._pool) as connection:
                yield connection
        self._on_commit()

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        # What `transaction()` does, as a plain call: no context manager's generator around
        # the hot path of every write.
        with TRANSIENT_AS_503:
            async with TransactionLease(self._pool) as connection:
                result = await work(connection)
        self._on_commit()
        return result

    async def read(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pgbouncer:
            # In a transaction, for the statement timeout's SET LOCAL (_pgbouncer.py).
            with TRANSIENT_AS_503:
                async with Lease(self._pool) as connection, connection.transaction():
                    await connection.execute(self._pool.set_timeout)
                    return await query(connection)
        try:
            return await self._read_once(query)
        except UnavailableError as exc:
            if not is_broken(exc.__cause__):
                raise
            # The server closed the connection an instant before: the read runs once more on
            # a new one (safe: a read changes nothing).
        return await self._read_once(query)

    async def _read_once(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        # What `connection()` does, without its context manager's generator: the hot path of
        # every read.
        with TRANSIENT_AS_503:
            async with Lease(self._pool) as connection:
                return await query(connection)

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Hold one LISTEN connection (``_listen.py``); not through PgBouncer, where LISTEN
        cannot work and the poll interval rules: there, wait to be cancelled."""
        if self._pgbouncer:
            await asyncio.Event().wait()
        settings = self._settings
        await listen(_dsn(settings), settings.database_connect_timeout, channel, on_notify)


def _dsn(settings: Settings) -> str:
    """The database URL as asyncpg takes it."""
    return settings.database.set(drivername="postgresql").render_as_string(hide_password=False)
