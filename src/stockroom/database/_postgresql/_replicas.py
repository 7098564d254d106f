"""Read replicas: their pools, their health, and a read that a caught-up replica answers.

**Health, sampled in the background** (one task, every ``database_replica_check_interval``):
the primary's position (``pg_current_wal_lsn()``, with its timeline) is written down with the
time it was read; each replica answers its replay position, timeline and whether it is in
recovery. A replica's lag is how long ago the primary was first seen past the replica's
replay position (0 when the replica has replayed the newest sample): the time its readers
are behind, at the sampling interval's resolution. A replica takes reads while it answers,
is a standby of the same cluster, and lags by at most ``database_replica_max_lag``.

**A circuit, not a retry storm.** A replica whose connection fails (refused, reset, timed
out) is excluded at once, by the request that saw it fail, and only the sampler tries it
again: one attempt per interval, never one per request. Its reads go to the primary
meanwhile.

**A read** (:meth:`Replica.read`) takes a connection of the replica's pool. With a wanted
position (the request's consistency token), it first checks on that connection that the
replica has replayed past it, waiting up to ``database_replica_wait`` (checking every few
milliseconds); a replica still behind then answers nothing (:data:`BEHIND`) and the caller
reads from the primary. After the read, the replay position is read again on the same
connection: the token of the answer, at or past what the read saw (replay only moves on), so
that a client that sends it back never reads anything older. A read that fails on the
replica for any database reason (the connection, a statement cancelled by a conflict with
recovery) answers :data:`FAILED`, and the caller reads from the primary: a read changes
nothing, so it can run twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.database import ReplicaStatus
from stockroom.database._postgresql._engine import create_engine
from stockroom.database._postgresql._failures import is_broken
from stockroom.database._postgresql._pool import Lease, RequestPool
from stockroom.database.consistency import REPLAYED, Consistency, Position, parse_lsn
from stockroom.settings import Settings

__all__ = [
    "BEHIND",
    "FAILED",
    "REPLICA_FAILURES",
    "Outcome",
    "Replica",
    "ReplicaLease",
    "ReplicaSet",
]

log = structlog.get_logger("stockroom.database")

T = TypeVar("T")


class Outcome:
    """A replica's read that gave no answer, and why (the primary's read is counted so)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Outcome({self.reason!r})"


BEHIND: Final = Outcome("behind")  # not caught up with the wanted position in time
FAILED: Final = Outcome("replica failed")  # the replica could not answer

_REPLAYED = "SELECT pg_last_wal_replay_lsn()::text"
_STANDBY = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                (SELECT timeline_id FROM pg_control_checkpoint())),
       (SELECT system_identifier FROM pg_control_system())"""
# What a replica's statement may fail with: the server's errors, and the connection's (an
# idle connection the server ended, e.g. at its shutdown, can fail its next statement with
# asyncpg's InternalClientError "cannot switch to state 12", no InterfaceError).
REPLICA_FAILURES = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
_CAUGHT_UP_POLL = 0.005  # seconds between two checks of a replica's replay position


def _name(url: str) -> str:
    """Host, port and database of a replica's URL, without the password (for logs)."""
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


class Replica:
    """One standby: its pool, what the sampler last saw of it, and its reads."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = make_url(url).set(drivername="postgresql")
        self.name = _name(url)
        # A replica is reached directly, not through PgBouncer (whatever the primary's path):
        # its connections get the statement timeout when they are made.
        direct = settings.model_copy(update={"database_url": url, "database_pgbouncer": False})
        self.pool = RequestPool(direct)
        # For the event stream's replay, which reads the log through SQLAlchemy (events/log.py).
        self.engine: AsyncEngine = create_engine(direct)
        self.wait = settings.database_replica_wait
        # The reads running on it now, and those its exclusion ended (_end_reads).
        self._reads: set[asyncio.Task[Any]] = set()
        self._ended: set[asyncio.Task[Any]] = set()
        self.max_lag = settings.database_replica_max_lag
        self.position: Position | None = None  # replay position at the last sample
        self.lag: float | None = None
        self.reachable = False
        self.reason = "not checked yet"

    @property
    def serving(self) -> bool:
        return not self.reason

    async def open(self) -> None:
        await self.pool.open(self.url.render_as_string(hide_password=False))

    async def close(self) -> None:
        await self.pool.close()
        await self.engine.dispose()

    def trip(self, why: str) -> None:
        """Take no reads until the sampler sees it well again; end those on it."""
        if self.serving:
            log.warning("replica excluded", replica=self.name, reason=why)
        self.reachable = False
        self.reason = why
        self._end_reads()

    async def sample(self, primary: Position | None, history: _History, within: float) -> None:
        try:
            async with asyncio.timeout(within), Lease(self.pool) as connection:
                in_recovery, replayed, timeline, system = await connection.fetchrow(_STANDBY)
        except REPLICA_FAILURES as exc:
            self.trip(f"unreachable: {type(exc).__name__}")
            self.lag = None
            return
        self.reachable = True
        if not in_recovery or replayed is None:
            self.position, self.lag = None, None
            self._judge("not a standby")
            return
        self.position = Position(int(system), int(timeline), parse_lsn(replayed))
        if primary is None:  # the primary is away: nothing to measure against
            self._judge("")
            return
        if not self.position.same_history(primary):
            self.lag = None
            self._judge("on another timeline or cluster than the primary")
            return
        self.lag = history.lag(self.position.lsn)
        over = self.lag > self.max_lag
        self._judge(f"lag {self.lag:.1f} s over {self.max_lag:g} s" if over else "")

    def _judge(self, reason: str) -> None:
        if reason and self.serving:
            log.warning("replica excluded", replica=self.name, reason=reason)
        elif not reason and not self.serving:
            log.info("replica serving", replica=self.name)
        self.reason = reason

    async def read(
        self,
        query: Callable[[asyncpg.Connection], Awaitable[T]],
        wanted: Position | None,
        state: Consistency | None,
    ) -> T | Outcome:
        position = self.position
        task = asyncio.current_task()
        if position is None or task is None:
            return FAILED
        self._reads.add(task)
        try:
            async with Lease(self.pool) as connection:
                try:
                    if wanted is not None and not await self._caught_up(connection, wanted.lsn):
                        return BEHIND
                    REPLAYED.set(None)
                    result = await query(connection)
                    if state is not None:
                        # Read by the query itself where it could (consistency.REPLAYED).
                        replayed = REPLAYED.get() or await connection.fetchval(_REPLAYED)
                        state.saw(Position(position.system, position.timeline, parse_lsn(replayed)))
                    return result
                except asyncio.CancelledError:
                    if task in self._ended:  # mid-statement on a server that does not answer
                        connection.terminate()
                    raise
        except asyncio.CancelledError:
            if task not in self._ended:
                raise
            self._ended.discard(task)
            task.uncancel()
            return FAILED  # ended by the replica's exclusion (_end_reads): the primary answers
        except REPLICA_FAILURES as exc:
            self.failed(exc)
            return FAILED
        finally:
            self._reads.discard(task)

    def failed(self, exc: BaseException) -> None:
        """A read on it failed: a broken or unanswered connection excludes the replica; a
        statement it refused or cancelled (a conflict with recovery) only fails that read."""
        if is_broken(exc) or isinstance(exc, OSError | TimeoutError):
            self.trip(f"unreachable: {type(exc).__name__}")
        else:
            log.info("replica read failed", replica=self.name, error=type(exc).__name__)

    def _end_reads(self) -> None:
        """The replica is unreachable: the reads still on it end (their connections are
        dropped) and the primary answers them, instead of waiting for the driver's command
        timeout on a server that may never answer (a frozen machine, dropped packets)."""
        if not self._reads:
            return
        current = asyncio.current_task()
        for task in self._reads:
            if task is not current and task not in self._ended:
                self._ended.add(task)
                task.cancel()

    @contextlib.asynccontextmanager
    async def connection(self, wanted: Position | None) -> AsyncIterator[ReplicaLease | None]:
        """A connection of this replica held for the block, once caught up with ``wanted``;
        None if it is behind after the wait or cannot be reached (the caller then uses the
        primary). A failure the caller handles inside the block it reports with
        ``ReplicaLease.failed`` (the connection is dropped if broken, the replica excluded)."""
        lease = Lease(self.pool)
        try:
            connection = await lease.__aenter__()
        except REPLICA_FAILURES as exc:
            self.trip(f"unreachable: {type(exc).__name__}")
            yield None
            return
        held = ReplicaLease(self, connection)
        failure: BaseException | None = None
        try:
            caught_up = wanted is None or await self._caught_up(connection, wanted.lsn)
            yield held if caught_up else None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            failure = failure or held.failure
            await lease.__aexit__(type(failure) if failure else None, failure, None)

    async def _caught_up(self, connection: asyncpg.Connection, lsn: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            if parse_lsn(await connection.fetchval(_REPLAYED)) >= lsn:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_CAUGHT_UP_POLL)


class ReplicaLease:
    """A replica's connection held by a long read, and how it reports a failure."""

    __slots__ = ("connection", "failure", "replica")

    def __init__(self, replica: Replica, connection: asyncpg.Connection) -> None:
        self.replica = replica
        self.connection = connection
        self.failure: BaseException | None = None

    def failed(self, exc: BaseException) -> None:
        self.failure = exc
        self.replica.failed(exc)


class _History:
    """The primary's positions of the last samples, with when each was read."""

    def __init__(self, keep: int) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=keep)

    def add(self, when: float, lsn: int) -> None:
        self._samples.append((when, lsn))

    def lag(self, replayed: int) -> float:
        """Seconds since the primary was first seen past ``replayed`` (0: not yet)."""
        now = asyncio.get_running_loop().time()
        for when, lsn in self._samples:
            if lsn > replayed:
                return now - when
        return 0.0


class ReplicaSet:
    """The configured replicas, their sampler, and the choice of one for a read."""

    def __init__(
        self, settings: Settings, primary_position: Callable[[], Awaitable[Position]]
    ) -> None:
        self.replicas = [Replica(url, settings) for url in settings.database_replica_url_list]
        self._primary_position = primary_position
        self._interval = settings.database_replica_check_interval
        self._timeout = settings.database_connect_timeout
        keep = int(settings.database_replica_max_lag / self._interval) + 2
        self._history = _History(keep)
        self._next = 0
        self._sampler: asyncio.Task[None] | None = None
        self.primary: Position | None = None
        # Reads by where they ran and why: ("replica", "caught up"), ("primary", "behind")...
        self.reads: collections.Counter[tuple[str, str]] = collections.Counter()

    async def start(self) -> None:
        for replica in self.replicas:
            await replica.open()
        self._sampler = asyncio.create_task(self._sample_forever(), name="replica-sampler")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        for replica in self.replicas:
            await replica.close()

    def status(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(r.name, r.reachable, r.serving, r.lag, r.reason) for r in self.replicas
        ]

    async def sample(self) -> None:
        """Read the primary's position, then each replica's (once; the sampler's step)."""
        primary: Position | None = None
        try:
            async with asyncio.timeout(self._timeout):
                position = await self._primary_position()
        except Exception:  # the primary is away: replicas are judged on what they answer
            pass
        else:
            self.primary = primary = position
            self._history.add(asyncio.get_running_loop().time(), position.lsn)
        await asyncio.gather(
            # Half the connect timeout for a replica's answer (a healthy one answers in
            # milliseconds): one that stops answering is excluded, and the reads on it ended
            # (Replica._end_reads), within the connect timeout of its last answer, with a
            # check interval of at most half of it.
            *(r.sample(primary, self._history, self._timeout / 2) for r in self.replicas)
        )

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # never let the sampler die
                log.exception("replica sampling failed")
            await asyncio.sleep(self._interval)

    def pick(self, wanted: Position | None) -> tuple[Replica | None, str]:
        """A replica for a read wanting ``wanted`` (round robin among those that may
        serve it), or None and why the primary must."""
        serving = [r for r in self.replicas if r.serving and r.position is not None]
        if not serving:
            return None, "no replica serving"
        if wanted is not None:
            serving = [
                r for r in serving if r.position is not None and r.position.same_history(wanted)
            ]
            if not serving:
                return None, "token of another history"
            # Those already past it first (the sampler's view; the read checks again).
            ahead = [r for r in serving if r.position is not None and r.position.lsn >= wanted.lsn]
            serving = ahead or serving
        self._next = (self._next + 1) % len(serving)
        return serving[self._next], ""
