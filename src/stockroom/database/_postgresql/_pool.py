"""The requests' connections: asyncpg's pool, a first-come-first-served queue in front of it,
and the one way to hold a connection (:class:`Lease`, :class:`TransactionLease`).

**First come first served.** asyncpg's pool queue is not fair: a connection given back wakes
the longest waiter, but a request that asks before that waiter runs takes it, and the waiter
queues again at the back; under load some requests waited past the pool timeout (503s) while
newer ones were served. A semaphore (fair since Python 3.11.1) with as many turns as the pool
has connections hands a freed turn to its first waiter, so the pool itself never has one.

**The wait is bounded with asyncio.timeout**, not asyncpg's ``acquire(timeout=...)``: on
Python 3.11 that runs every acquire in a task of its own (``asyncio.wait_for``), a cost every
request would pay.

**No reset on release.** asyncpg resets a connection it takes back (RESET ALL, UNLISTEN,
CLOSE ALL and the advisory locks): a round trip on every release. Nothing here leaves such
state behind: settings are SET LOCAL, advisory locks are transaction-scoped, and every
transaction ends with its block. A connection given back still in a transaction (its
rollback failed: a broken connection, a cancellation) is closed instead.

The leases are classes, not generator-based context managers, and take and give back the
connection in their own ``__aenter__`` and ``__aexit__``: every request goes through one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncpg
import structlog
from asyncpg.transaction import Transaction

from stockroom.database import PoolStatus
from stockroom.database._postgresql import _pgbouncer as pgbouncer
from stockroom.database._postgresql._failures import drop, is_broken
from stockroom.database.hosts import Hosts
from stockroom.settings import Settings

__all__ = ["Lease", "RequestPool", "TransactionLease"]

log = structlog.get_logger("stockroom.database")

_CLOSE_SECONDS = 5.0


class RequestPool:
    """asyncpg's pool for the requests' statements, with its queue; opened by the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.size = settings.database_pool_size
        self.maximum = settings.database_pool_size + settings.database_max_overflow
        self.timeout = settings.database_pool_timeout
        # Requests wait for a connection in the order they asked (see the module's docstring).
        self.turns = asyncio.Semaphore(self.maximum)
        # Through PgBouncer, what each transaction runs after BEGIN (_pgbouncer.py).
        self.set_timeout = pgbouncer.set_timeout(settings)
        self.connections: asyncpg.Pool | None = None
        # Run on the connection right after each commit (with replicas: the write's
        # consistency token); a failure of its own is logged, never the write's.
        self.after_commit: Callable[[asyncpg.Connection], Awaitable[None]] | None = None

    async def open(self, dsn: str, hosts: Hosts | None = None) -> None:
        """``hosts``: the URL's several hosts, each tried with a timeout of its own
        (``database/hosts.py``); None: asyncpg connects by itself."""
        settings = self._settings
        connect = None
        if hosts is not None:

            async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
                async def attempt(host: str, port: int) -> asyncpg.Connection:
                    return await asyncpg.connect(*args, host=host, port=port, **kwargs)

                return await hosts.connect(attempt)

        self.connections = await asyncpg.create_pool(
            dsn,
            connect=connect,
            # No connection until one is needed: start-up works with the database away.
            min_size=0,
            max_size=self.maximum,
            max_inactive_connection_lifetime=300,
            timeout=settings.database_connect_timeout,
            # The client-side backstop if the server never answers (a dead network).
            command_timeout=settings.database_statement_timeout + 5,
            statement_cache_size=pgbouncer.statement_cache_size(settings),
            server_settings=pgbouncer.server_settings(settings),
            reset=_nothing_to_reset,  # no reset on release (see the module's docstring)
        )

    async def close(self) -> None:
        if self.connections is None:
            return
        try:
            await asyncio.wait_for(self.connections.close(), _CLOSE_SECONDS)
        except TimeoutError:
            log.warning("database connections still busy at shutdown; closing them")
            self.connections.terminate()

    def status(self) -> PoolStatus:
        size, maximum = self.size, self.maximum
        if self.connections is None:
            return PoolStatus(size, maximum, 0, 0)
        opened = self.connections.get_size()
        idle = self.connections.get_idle_size()
        return PoolStatus(size, maximum, opened - idle, max(0, opened - size))


class Lease:
    """A connection of the pool, held for an ``async with`` block.

    Taken in turn, within the pool timeout; given back when the block ends, unless the
    block's error says the connection is broken: then it is dropped (``_failures.drop``)."""

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: RequestPool) -> None:
        self._pool = pool

    async def __aenter__(self) -> asyncpg.Connection:
        pool = self._pool
        assert pool.connections is not None, "the database is not started"
        async with asyncio.timeout(pool.timeout):
            await pool.turns.acquire()
            try:
                connection: asyncpg.Connection = await pool.connections.acquire()
            except BaseException:
                pool.turns.release()
                raise
        self._connection = connection
        return connection

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        failure: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        pool, connection = self._pool, self._connection
        assert pool.connections is not None
        # Whatever fails here, the connection goes back to asyncpg and its turn is freed.
        try:
            if failure is not None and is_broken(failure):
                await drop(pool.connections, connection)
        finally:
            try:
                # Still in a transaction: its rollback failed, and the pool does not reset
                # connections, so this one must not go back open. (Already given back by
                # asyncpg, on seeing it lost: InterfaceError, nothing to do.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    if connection.is_in_transaction():
                        connection.terminate()
                await pool.connections.release(connection)
            finally:
                pool.turns.release()


class TransactionLease(Lease):
    """A connection of the pool in a transaction of its own, for an ``async with`` block:
    committed if the block ends without an error, rolled back otherwise; then given back as
    a :class:`Lease` is (dropped if the block's failure, or the commit's or rollback's own,
    says it is broken).

    A connection the server closed while it sat in the pool (a restart, a failover,
    pg_terminate_backend) and that asyncpg has not noticed yet fails at BEGIN, before any of
    the work is sent: then BEGIN runs once more on a new connection (safe: nothing was done;
    the pool's others were expired with the broken one). A failure after BEGIN is not
    retried: the work may have been sent, and a COMMIT that failed may have committed.

    (``Lease.__aenter__(self)``, not ``super()``: on Python 3.11 each ``super()`` is one
    more object a request.)"""

    __slots__ = ("_transaction",)

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            return await self._begin()
        except Exception as exc:
            if not is_broken(exc):
                raise
        return await self._begin()

    async def _begin(self) -> asyncpg.Connection:
        connection = await Lease.__aenter__(self)
        try:
            transaction: Transaction = connection.transaction()
            self._transaction = transaction
            await transaction.start()
            if self._pool.set_timeout is not None:  # through PgBouncer
                await connection.execute(self._pool.set_timeout)
        except BaseException as exc:
            await Lease.__aexit__(self, type(exc), exc, exc.__traceback__)
            raise
        return connection

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        failure: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if failure is None:
                await self._transaction.commit()
            else:
                await self._transaction.rollback()
        except BaseException as exc:
            await Lease.__aexit__(self, type(exc), exc, exc.__traceback__)
            raise
        after = self._pool.after_commit
        if failure is None and after is not None:
            try:
                await after(self._connection)
            except Exception as exc:  # committed all the same: the answer goes without it
                log.warning("after-commit step failed", error=type(exc).__name__)
                await Lease.__aexit__(self, type(exc), exc, exc.__traceback__)
                return
        await Lease.__aexit__(self, _type, failure, traceback)


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    return None
