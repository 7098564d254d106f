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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import structlog

from stockroom.database import PoolStatus
from stockroom.errors import UnavailableError
from stockroom.settings import Settings

__all__ = ["PostgresDatabase"]

T = TypeVar("T")

log = structlog.get_logger("stockroom.database")

# SQLSTATEs that mean "try again later": a statement cancelled by statement_timeout (57014),
# too many connections (53300), a server shutting down or starting (57P01-57P03), and every
# connection exception (class 08).
_TRANSIENT_SQLSTATES = ("57014", "53300", "57P01", "57P02", "57P03", "08")
# Errors of the connection itself, raised before or instead of a server's answer.
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
)
_CLOSE_SECONDS = 5.0


class PostgresDatabase:
    def __init__(self, settings: Settings, *, on_commit: Callable[[], None]) -> None:
        self._settings = settings
        self._on_commit = on_commit
        self._pool: asyncpg.Pool | None = None
        self._pgbouncer = settings.database_pgbouncer
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
            max_size=settings.database_pool_size + settings.database_max_overflow,
            max_inactive_connection_lifetime=300,
            timeout=settings.database_connect_timeout,
            # The client-side backstop if the server never answers (a dead network).
            command_timeout=settings.database_statement_timeout + 5,
            statement_cache_size=0 if self._pgbouncer else 256,
            server_settings=server_settings,
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
        assert self._pool is not None, "the database is not started"
        with _translated():
            async with self._pool.acquire(timeout=self._settings.database_pool_timeout) as conn:
                yield conn

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
        async with self.connection() as connection, self.write(connection):
            yield connection

    async def read(self, query: Callable[[Any], Awaitable[T]]) -> T:
        if self._pgbouncer:
            # Through PgBouncer the statement timeout is set per transaction.
            async with self.connection() as connection, connection.transaction():
                await connection.execute(self._set_timeout)
                return await query(connection)
        try:
            async with self.connection() as connection:
                return await query(connection)
        except UnavailableError as exc:
            # A connection the server closed an instant before: once more, on a new one.
            if not isinstance(exc.__cause__, asyncpg.ConnectionDoesNotExistError):
                raise
        async with self.connection() as connection:
            return await query(connection)

    def pool_status(self) -> PoolStatus:
        size = self._settings.database_pool_size
        maximum = size + self._settings.database_max_overflow
        if self._pool is None:
            return PoolStatus(size, maximum, 0, 0)
        opened = self._pool.get_size()
        return PoolStatus(size, maximum, opened - self._pool.get_idle_size(), max(0, opened - size))


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
