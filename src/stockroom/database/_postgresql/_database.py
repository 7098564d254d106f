"""The :class:`~stockroom.database.Database` of PostgreSQL: the stores' connections and
transactions, put together from the request pool's leases (``_pool.py``), what a driver
error means (``_failures.py``) and what differs through PgBouncer (``_pgbouncer.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.database import PoolStatus, ReplicaStatus
from stockroom.database._postgresql._failures import TRANSIENT_AS_503, is_broken
from stockroom.database._postgresql._listen import listen
from stockroom.database._postgresql._pool import Lease, RequestPool, TransactionLease
from stockroom.database._postgresql._replicas import Outcome, ReplicaLease, ReplicaSet
from stockroom.database.consistency import CONSISTENCY, Position, parse_lsn
from stockroom.database.hosts import Hosts
from stockroom.errors import UnavailableError
from stockroom.settings import Settings

__all__ = ["PostgresDatabase"]

T = TypeVar("T")

# The primary's position now (its timeline is the first 8 hex digits of the WAL file name).
_POSITION = "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
_SYSTEM = "SELECT system_identifier FROM pg_control_system()"


class PostgresDatabase:
    """The stores' connections and transactions on PostgreSQL; the requests' pool is opened
    by ``start`` and closed by ``close`` (the lifespan)."""

    def __init__(self, settings: Settings, *, on_commit: Callable[[], None]) -> None:
        self._settings = settings
        self._on_commit = on_commit
        self._pool = RequestPool(settings)
        # Several hosts (failover): each tried with a timeout of its own (database/hosts.py).
        self._hosts = Hosts.of(settings.database)
        self._turns = self._pool.turns  # the pool's queue (tests watch its waiters)
        self._pgbouncer = settings.database_pgbouncer
        # Through PgBouncer each transaction may run on another server connection.
        self.keeps_sessions = not self._pgbouncer
        self._system: int | None = None  # the cluster's system identifier, once read
        # Replicas (_replicas.py): only where configured; else every read is the primary's.
        self.replicas: ReplicaSet | None = None
        if settings.database_replica_url_list:
            self.replicas = ReplicaSet(settings, self._sample_primary)
            self._pool.after_commit = self._note_commit

    async def start(self) -> None:
        await self._pool.open(_dsn(self._settings), self._hosts)
        if self.replicas is not None:
            await self.replicas.start()

    async def close(self) -> None:
        if self.replicas is not None:
            await self.replicas.close()
        await self._pool.close()

    def replica_status(self) -> list[ReplicaStatus]:
        return [] if self.replicas is None else self.replicas.status()

    def read_routes(self) -> Mapping[tuple[str, str], int]:
        return {} if self.replicas is None else self.replicas.reads

    async def _position(self, connection: asyncpg.Connection) -> Position:
        """Where the primary's history is now, read on ``connection``."""
        lsn, wal_file = await connection.fetchrow(_POSITION)
        if self._system is None:
            self._system = int(await connection.fetchval(_SYSTEM))
        return Position(self._system, int(wal_file[:8], 16), parse_lsn(lsn))

    async def _sample_primary(self) -> Position:
        return await self.read(self._position)

    async def _note_commit(self, connection: asyncpg.Connection) -> None:
        """After a commit: its position is the request's token (read-your-writes)."""
        state = CONSISTENCY.get()
        if state is not None:
            state.saw(await self._position(connection))

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
            if self.replicas is not None:
                with TRANSIENT_AS_503:
                    await self._note_commit(connection)

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

    async def read_caught_up(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        replicas = self.replicas
        if replicas is None:
            return await self.read(query)
        state = CONSISTENCY.get()
        wanted = None if state is None else state.wanted
        replica, why = replicas.pick(wanted)
        if replica is not None:
            result = await replica.read(query, wanted, state)
            if not isinstance(result, Outcome):
                replicas.reads["replica", "no token" if wanted is None else "caught up"] += 1
                return result
            why = result.reason
        replicas.reads["primary", why] += 1
        if state is None:
            return await self.read(query)

        async def and_position(connection: asyncpg.Connection) -> T:
            result = await query(connection)
            state.saw(await self._position(connection))
            return result

        return await self.read(and_position)

    @asynccontextmanager
    async def replica_connection(self) -> AsyncIterator[ReplicaLease | None]:
        """For a long read (the export): a connection of a replica caught up with the
        request's token, held for the block; None where no replica can serve it (the caller
        reads the primary). The caller handles an error inside the block (a statement the
        standby cancelled: it goes on from the primary) and reports it
        (``ReplicaLease.failed``, then :meth:`replica_failed`)."""
        replicas = self.replicas
        if replicas is None:
            yield None
            return
        state = CONSISTENCY.get()
        wanted = None if state is None else state.wanted
        replica, why = replicas.pick(wanted)
        if replica is None:
            replicas.reads["primary", why] += 1
            yield None
            return
        async with replica.connection(wanted) as connection:
            if connection is None:
                replicas.reads["primary", "behind or unreachable"] += 1
            else:
                replicas.reads["replica", "no token" if wanted is None else "caught up"] += 1
            yield connection

    def replica_engine(self) -> AsyncEngine | None:
        if self.replicas is None:
            return None
        replica, _why = self.replicas.pick(None)
        if replica is None:
            return None
        self.replicas.reads["replica", "stream replay"] += 1
        return replica.engine

    def replica_failed(self, held: ReplicaLease, exc: BaseException) -> None:
        """A long read on a replica failed part way; the caller goes on from the primary."""
        held.failed(exc)
        if self.replicas is not None:
            self.replicas.reads["primary", "replica failed"] += 1

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
        await listen(
            _dsn(settings), settings.database_connect_timeout, channel, on_notify, self._hosts
        )


def _dsn(settings: Settings) -> str:
    """The database URL as asyncpg takes it. Several hosts (a primary and its standbys,
    ``settings.normalise_database_url``) become one ``host`` parameter, a comma-separated
    list: asyncpg reads only the last of repeated ones. With ``target_session_attrs``
    (read-write), it tries them in order and keeps the first that takes writes."""
    url = settings.database.set(drivername="postgresql")
    hosts = url.query.get("host")
    if isinstance(hosts, tuple):
        url = url.update_query_dict({"host": ",".join(hosts)})
    return url.render_as_string(hide_password=False)
