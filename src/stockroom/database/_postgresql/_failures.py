"""What a driver error means, and what is done about it.

- **The connection is broken** (:func:`is_broken`): the server closed it (a restart, a
  failover, ``pg_terminate_backend``, an idle timeout), often found only by the next statement.
  Such a connection is dropped, not given back, and the pool's others are expired with it
  (:func:`drop`; a restart ended them too). Work that had sent nothing when it met one runs
  once more, on a new connection: a read (it changes nothing: ``PostgresDatabase.read``) and
  a transaction's BEGIN (nothing of the work was sent yet: ``_pool.TransactionLease``). A
  failure after BEGIN is not retried: the work may have been sent, and a COMMIT that failed
  may have committed.
- **Try again later** (:data:`TRANSIENT_AS_503`): no connection in time, a refused or lost
  connection, a statement timeout, a server shutting down or starting. It leaves as
  :class:`UnavailableError` (503, ``Retry-After: 1``); the driver's text goes to the log.
- Anything else is a bug and propagates (500).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import asyncpg
import structlog

from stockroom.errors import UnavailableError

__all__ = ["TRANSIENT_AS_503", "drop", "is_broken"]

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


def is_broken(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the connection itself is gone (not the statement)."""
    if isinstance(exc, _BROKEN_CONNECTION):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate.startswith(_ENDED_SESSION_SQLSTATES)


async def drop(pool: asyncpg.Pool, connection: asyncpg.Connection) -> None:
    """Keep a broken ``connection`` out of ``pool``; the pool's others may be gone too (a
    restart): the pool replaces each at its next use.

    Expired first: asyncpg may have given the connection back itself on seeing it lost, and
    then ``terminate()`` raises; the others must be expired all the same (else the read's
    retry takes the next dead one: "cannot switch to state 12; another operation (2) is in
    progress", a 503 in a fresh-clone CI run)."""
    await pool.expire_connections()
    with contextlib.suppress(asyncpg.InterfaceError):
        connection.terminate()


class _TransientAs503:
    """Driver errors that a retry may cure, as a 503; the driver's text goes to the log.

    One stateless instance, :data:`TRANSIENT_AS_503`, used as ``with TRANSIENT_AS_503:``:
    every request passes through it, and a generator-based context manager would cost each
    one a generator and its wrapper."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, asyncpg.PostgresError):
            sqlstate = getattr(exc, "sqlstate", None) or ""
            if not sqlstate.startswith(_TRANSIENT_SQLSTATES):
                return
            log.warning("database unavailable", error=type(exc).__name__, sqlstate=sqlstate)
            raise _unavailable() from exc
        if isinstance(exc, _CONNECTION_ERRORS):
            log.warning("database unavailable", error=type(exc).__name__)
            raise _unavailable() from exc


TRANSIENT_AS_503 = _TransientAs503()


def _unavailable() -> UnavailableError:
    return UnavailableError(
        "The database is unavailable or busy; retry shortly.", headers={"Retry-After": "1"}
    )
