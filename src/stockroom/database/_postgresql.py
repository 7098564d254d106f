"""PostgreSQL: one asyncpg pool, owned by the lifespan.

The stores run their statements on asyncpg directly: SQLAlchemy's async execution path
costs more than the statement itself for the hot paths (docs/async.md). asyncpg prepares
each statement once per connection and keeps it (its statement cache), except through
PgBouncer in transaction mode, where a prepared statement may be missing on the next
transaction's server connection: there the cache is off and every statement is prepared
anew, unnamed.

Driver errors that mean "try again later" (no connection in time, a refused or lost
connection, a statement timeout, a server shutting down) leave as :class:`UnavailableError`
(503); anything else is a bug and propagates (500).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import structlog
from asyncpg.transaction import Transaction
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from stockroom.database import PoolStatus
from stockroom.db import PGBOUNCER_CONNECT_ARGS
from stockroom.errors import UnavailableError
from stockroom.settings import Settings

__all__ = ["PostgresDatabase", "create_engine", "unusable_reason"]

T = TypeVar("T")

log = structlog.get_logger("stockroom.database")

# SQLSTATEs that mean "try again later": a statement cancelled by statement_timeout (57014),
# too many connections (53300), a server shutting down or starting (57P01-57P03), and every
# connection exception (class 08).
_TRANSIENT_SQLSTATES = ("57014", "53300", "57P01", "57P02", "57P03", "08")
# Errors of the connection itself, raised before or instead of a server's answer.
# A connection that broke under us: the server closed it (a restart, a failover,
# pg_terminate_backend, an idle timeout), sometimes found only by the next statement, which
# then fails with one of these (an idle connection told FATAL by the server can be left in a
# state asyncpg calls an internal error).
_BROKEN_CONNECTION = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, *_BROKEN_CONNECTION)
# The server ended the session (pg_terminate_backend, a shutdown) or the connection failed.
_ENDED_SESSION_SQLSTATES = ("57P01", "57P02", "57P03", "08")


def _is_broken(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is gone (not the statement)."""
    if isinstance(exc, _BROKEN_CONNECTION):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate.startswith(_ENDED_SESSION_SQLSTATES)


_CLOSE_SECONDS = 5.0
_RECONNECT_SECONDS = 2.0


def unusable_reason(_settings: Settings) -> None:
    """Nothing to see before connecting: the server says what is wrong."""
    return None


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's SQLAlchemy engine on PostgreSQL: the background work and the admin
    endpoints (the requests' statements run on :class:`PostgresDatabase`'s pool). Its pool
    is bounded so that overload is a 503, not a pile-up."""
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
        # a read that meets one anyway fails once (a 503).
        pool_recycle=1800,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "checkout", _on_checkout)
    event.listen(engine.sync_engine, "handle_error", _on_error)
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


def _on_error(context: ExceptionContext) -> None:
    # SQLAlchemy knows a closed asyncpg connection, not one the server ended that asyncpg
    # left in an internal error state: without this, such a connection went back into the
    # pool and failed every statement until recycled. Now it is dropped, and the pool's
    # other connections (a restart ended them too) are replaced at their next checkout.
    error = context.original_exception
    driver_error = error.__cause__ if error.__cause__ is not None else error
    if _is_broken(driver_error):
        context.is_disconnect = True


class PostgresDatabase:
    def __init__(self, settings: Settings, *, on_commit: Callable[[], None]) -> None:
        self._settings = settings
        self._on_commit = on_commit
        self._pool: asyncpg.Pool | None = None
        self._pgbouncer = settings.database_pgbouncer
        self.keeps_sessions = not self._pgbouncer
        self._max_connections = settings.database_pool_size + settings.database_max_overflow
        # Requests wait for a connection in the order they asked (see `_acquire`).
        self._turns = asyncio.Semaphore(self._max_connections)
        self._set_timeout = (
            f"SET LOCAL statement_timeout = {int(settings.database_statement_timeout * 1000)}"
        )

    async def start(self) -> None:
        settings = self._settings
        dsn = settings.database.set(drivername="postgresql").render_as_string(hide_password=False)
        server_settings = {"application_name": "stockroom"}
        if not self._pgbouncer:
            # PgBouncer refuses unknown startup parameters; there the timeout is set in
            # every transaction instead.
            server_settings["statement_timeout"] = str(
                int(settings.database_statement_timeout * 1000)
            )
        self._pool = await asyncpg.create_pool(
            dsn,
            # No connection until one is needed: start-up works with the database away.
            min_size=0,
            max_size=self._max_connections,
            max_inactive_connection_lifetime=300,
            timeout=settings.database_connect_timeout,
            # The client-side backstop if the server never answers (a dead network).
            command_timeout=settings.database_statement_timeout + 5,
            statement_cache_size=0 if self._pgbouncer else 256,
            server_settings=server_settings,
            # asyncpg resets a connection it takes back (RESET ALL, UNLISTEN, CLOSE ALL and
            # the advisory locks): a round trip on every release. Nothing here leaves such
            # state behind: settings are SET LOCAL, advisory locks are transaction-scoped,
            # and every transaction ends with its block (see `write`).
            reset=_nothing_to_reset,
        )

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_SECONDS)
        except TimeoutError:
            log.warning("database connections still busy at shutdown; closing them")
            self._pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; every driver error inside the block is translated."""
        with _translated():
            connection = await self._acquire()
            try:
                yield connection
            except Exception as exc:
                await self._drop_if_broken(connection, exc)
                raise
            finally:
                await self._release(connection)

    async def _acquire(self) -> asyncpg.Connection:
        """A connection, first come first served, within the pool timeout.

        First come first served: asyncpg's pool queue is not fair. A connection given
        back wakes the longest waiter, but a request that asks before that waiter runs
        takes it, and the waiter queues again at the back; under load some requests waited
        past the pool timeout (503s at 1,024 connections) while newer ones were served. The
        semaphore (fair since Python 3.11.1) hands a freed turn to its first waiter, so the
        pool itself never has one.

        The wait is bounded with asyncio.timeout, not acquire(timeout=...): on Python 3.11
        that runs every acquire in a task of its own (asyncio.wait_for), about a twentieth
        of a GET /items/{id}'s CPU (py-spy)."""
        assert self._pool is not None, "the database is not started"
        async with asyncio.timeout(self._settings.database_pool_timeout):
            await self._turns.acquire()
            try:
                connection: asyncpg.Connection = await self._pool.acquire()
            except BaseException:
                self._turns.release()
                raise
        return connection

    async def _release(self, connection: asyncpg.Connection) -> None:
        assert self._pool is not None
        try:
            # A rollback that failed (a broken connection, a cancellation): the pool does
            # not reset connections (see `start`), so this one must not go back. (Already
            # given back by asyncpg, on seeing it lost: InterfaceError, nothing to do.)
            with contextlib.suppress(asyncpg.InterfaceError):
                if connection.is_in_transaction():
                    connection.terminate()
            await self._pool.release(connection)
        finally:
            self._turns.release()

    async def _drop_if_broken(self, connection: asyncpg.Connection, exc: Exception) -> None:
        """A connection found broken goes not back into the pool; and its others may be gone
        too (a restart): the pool replaces each at its next use. Expired first: asyncpg may
        have given the connection back itself on seeing it lost, and then `terminate()`
        raises; the others must be expired all the same (else the read's retry takes the
        next dead one: "cannot switch to state 12; another operation (2) is in progress",
        a 503 in a fresh-clone CI run)."""
        if _is_broken(exc):
            assert self._pool is not None
            await self._pool.expire_connections()
            with contextlib.suppress(asyncpg.InterfaceError):
                connection.terminate()

    @asynccontextmanager
    async def write(self, connection: asyncpg.Connection) -> AsyncIterator[None]:
        nested = connection.is_in_transaction()
        with _translated():
            async with connection.transaction():
                if self._pgbouncer and not nested:
                    await connection.execute(self._set_timeout)
                yield
        if not nested:
            self._on_commit()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with _translated():
            connection, transaction = await self._begin()
            try:
                yield connection
            except BaseException as exc:
                await self._end(connection, transaction, exc)
                raise
            await self._end(connection, transaction, None)
        self._on_commit()

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        # What `transaction()` does, without its context manager's generator (about a tenth
        # of a POST /items' CPU, in-process, py-spy).
        with _translated():
            connection, transaction = await self._begin()
            try:
                result = await work(connection)
            except BaseException as exc:
                await self._end(connection, transaction, exc)
                raise
            await self._end(connection, transaction, None)
        self._on_commit()
        return result

    async def _begin(self) -> tuple[asyncpg.Connection, Transaction]:
        """A pooled connection with its transaction begun.

        A connection the server closed while it sat in the pool (a restart, a failover,
        pg_terminate_backend) and that asyncpg has not noticed yet fails at BEGIN, before
        any of the work is sent: then BEGIN runs once more on a new connection (safe:
        nothing was done; the pool's others are expired with the broken one). A failure
        after BEGIN is not retried: the work may have been sent, and a COMMIT that failed
        may have committed."""
        try:
            return await self._begin_once()
        except Exception as exc:
            if not _is_broken(exc):
                raise
        return await self._begin_once()

    async def _begin_once(self) -> tuple[asyncpg.Connection, Transaction]:
        connection = await self._acquire()
        try:
            transaction = connection.transaction()
            await transaction.start()
            if self._pgbouncer:
                # Through PgBouncer the statement timeout is set per transaction.
                await connection.execute(self._set_timeout)
        except Exception as exc:
            await self._drop_if_broken(connection, exc)
            await self._release(connection)
            raise
        except BaseException:
            await self._release(connection)
            raise
        return connection, transaction

    async def _end(
        self,
        connection: asyncpg.Connection,
        transaction: Transaction,
        failure: BaseException | None,
    ) -> None:
        """Commit, or roll back after ``failure``; then the connection goes back to the pool,
        unless the failure (or the commit's or rollback's own) says it is broken."""
        try:
            if failure is None:
                await transaction.commit()
            else:
                await transaction.rollback()
        except Exception as exc:
            await self._drop_if_broken(connection, exc)
            raise
        else:
            if isinstance(failure, Exception):
                await self._drop_if_broken(connection, failure)
        finally:
            await self._release(connection)

    async def read(self, query: Callable[[Any], Awaitable[T]]) -> T:
        if self._pgbouncer:
            # Through PgBouncer the statement timeout is set per transaction.
            async with self.connection() as connection, connection.transaction():
                await connection.execute(self._set_timeout)
                return await query(connection)
        try:
            return await self._read_once(query)
        except UnavailableError as exc:
            if exc.__cause__ is None or not _is_broken(exc.__cause__):
                raise
            # The server closed the connection an instant before: the read runs once more on
            # a new one (safe: a read changes nothing).
        return await self._read_once(query)

    async def _read_once(self, query: Callable[[Any], Awaitable[T]]) -> T:
        # What `connection()` does, without its context manager's generator: the hot path
        # of every read.
        with _translated():
            connection = await self._acquire()
            try:
                return await query(connection)
            except Exception as exc:
                await self._drop_if_broken(connection, exc)
                raise
            finally:
                await self._release(connection)

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Hold one LISTEN connection (not through PgBouncer, where LISTEN cannot work and
        the poll interval rules); reconnect when it is lost."""
        if self._pgbouncer:
            await asyncio.Event().wait()
        settings = self._settings
        dsn = settings.database.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    dsn,
                    timeout=settings.database_connect_timeout,
                    server_settings={"application_name": "stockroom-listen"},
                )
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _conn, flag=lost: flag.set())
                await connection.add_listener(channel, lambda *_args: on_notify())
                on_notify()  # anything committed while we were not listening
                await lost.wait()
                log.warning("event listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("event listener cannot connect; polling until it can", error=str(exc))
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(connection.close(timeout=2))
            await asyncio.sleep(_RECONNECT_SECONDS)

    def pool_status(self) -> PoolStatus:
        size, maximum = self._settings.database_pool_size, self._max_connections
        if self._pool is None:
            return PoolStatus(size, maximum, 0, 0)
        opened = self._pool.get_size()
        return PoolStatus(size, maximum, opened - self._pool.get_idle_size(), max(0, opened - size))


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    return None


@contextmanager
def _translated() -> Iterator[None]:
    """Driver errors that a retry may cure, as a 503; the driver's text goes to the log."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if not sqlstate.startswith(_TRANSIENT_SQLSTATES):
            raise
        log.warning("database unavailable", error=type(exc).__name__, sqlstate=sqlstate)
        raise _unavailable() from exc
    except _CONNECTION_ERRORS as exc:
        log.warning("database unavailable", error=type(exc).__name__)
        raise _unavailable() from exc


def _unavailable() -> UnavailableError:
    return UnavailableError(
        "The database is unavailable or busy; retry shortly.", headers={"Retry-After": "1"}
    )
