"""The database a process writes through: one per process, made in the lifespan.

Everything that differs between PostgreSQL and SQLite lives in one module per database:
``_postgresql`` (a package of its parts) and ``_sqlite.py`` here (connections and
transactions), and the same two modules in each domain that has statements of its own
(``items``, ``idempotency``, ``events``, ``webhooks``). ``stockroom.stores`` puts them
together, once, in the lifespan, by ``Settings.backend``; no other code asks which database
it is on.

A :class:`Database` hands out connections of its driver: an ``asyncpg.Connection`` on
PostgreSQL (the hot statements run on asyncpg directly, prepared once per connection), a
SQLAlchemy ``AsyncConnection`` on SQLite. Only the same database's store modules use them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Database", "PoolStatus"]

T = TypeVar("T")
# The driver's connection: asyncpg's on PostgreSQL, SQLAlchemy's AsyncConnection on SQLite.
C = TypeVar("C")


class PoolStatus(NamedTuple):
    """The requests' connection pool, for the pool gauges of /metrics."""

    size: int  # connections kept
    maximum: int  # with the overflow
    checked_out: int
    overflow: int  # open above ``size``


class ReplicaStatus(NamedTuple):
    """One read replica, for /readyz and /metrics."""

    name: str  # host:port/database
    reachable: bool
    serving: bool  # takes reads
    lag_seconds: float | None
    reason: str  # why it takes no reads ("" when it does)


class Database(Protocol[C]):
    """Connections (of type ``C``) of one database, for the stores."""

    # Whether a connection held across transactions keeps its session (temporary tables):
    # not through PgBouncer in transaction mode, where each transaction may run on another
    # server connection. Work that needs session state across commits (an import that
    # commits batch by batch) runs as one transaction where this is False.
    keeps_sessions: bool

    async def start(self) -> None:
        """Open the pool (connections are made when first needed)."""

    async def close(self) -> None:
        """Close every connection (the end of the lifespan)."""

    def connection(self) -> AbstractAsyncContextManager[C]:
        """A connection held for the block, outside any transaction (a stream, an import
        that commits as it goes)."""

    def write(self, connection: C) -> AbstractAsyncContextManager[None]:
        """A write transaction on a held ``connection`` (or a savepoint inside one)."""

    def transaction(self) -> AbstractAsyncContextManager[C]:
        """A connection in a write transaction, committed when the block ends without an
        error (rolled back otherwise). SQLite takes its write lock at the start."""

    async def run(self, work: Callable[[C], Awaitable[T]]) -> T:
        """Run ``work`` on a connection in a write transaction of its own: committed when
        it returns, rolled back if it raises. What ``transaction()`` does, as a plain call
        (the hot path of every write: no context manager's generator around it)."""

    async def read(self, query: Callable[[C], Awaitable[T]]) -> T:
        """Run ``query`` on a connection outside any transaction, held only while it runs;
        once more on a new connection if the first turned out dead (a read changes
        nothing)."""

    async def read_caught_up(self, query: Callable[[C], Awaitable[T]]) -> T:
        """What ``read`` does, where a replica that has caught up with the request's
        consistency token may answer instead of the primary (``consistency.py``): item,
        list and ledger reads. Without replicas, ``read``."""

    def replica_engine(self) -> AsyncEngine | None:
        """A SQLAlchemy engine of a replica that takes reads, for the event stream's replay
        (any replica: the replay goes on from the primary where the replica stops); None
        without one."""

    def pool_status(self) -> PoolStatus: ...

    def replica_status(self) -> list[ReplicaStatus]:
        """Each configured replica, for /readyz and /metrics (none on SQLite)."""

    def read_routes(self) -> Mapping[tuple[str, str], int]:
        """Reads that could go to a replica so far, by (target, reason), where replicas
        are configured (for /metrics)."""

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Call ``on_notify`` on each notification on ``channel``, until cancelled, where
        the database can say so (PostgreSQL's LISTEN, not through PgBouncer); elsewhere
        wait to be cancelled: readers poll."""
