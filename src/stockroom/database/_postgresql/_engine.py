"""The process's SQLAlchemy engine on PostgreSQL: the background work and the admin endpoints.

The requests' statements run on the other pool, asyncpg's (``_pool.py``). This one is
bounded too, so that overload is a 503, not a pile-up, and it replaces a connection the
server closed without pinging each one it hands out.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from stockroom.database._postgresql import _pgbouncer as pgbouncer
from stockroom.database._postgresql._failures import is_broken
from stockroom.database.failures import mark_connect_failure
from stockroom.database.hosts import Hosts
from stockroom.settings import Settings

__all__ = ["create_engine", "unusable_reason"]


def unusable_reason(_settings: Settings) -> None:
    """Nothing to see before connecting: the server says what is wrong."""
    return None


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's SQLAlchemy engine on PostgreSQL: the background work and the admin
    endpoints (the requests' statements run on :class:`PostgresDatabase`'s pool). Its pool
    is bounded so that overload is a 503, not a pile-up."""
    connect_args: dict[str, Any] = {
        "timeout": settings.database_connect_timeout,
        # The client-side backstop if the server never answers (a dead network).
        "command_timeout": settings.database_statement_timeout + 5,
        "server_settings": pgbouncer.server_settings(settings),
        **pgbouncer.engine_connect_args(settings),
    }
    engine = create_async_engine(
        settings.database,
        pool_size=settings.database_background_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout,
        # No pool_pre_ping: it costs a round trip at every checkout. A connection the server
        # closed is replaced at checkout instead (_on_checkout), and a read that meets one
        # anyway fails once (a 503).
        pool_recycle=1800,
        connect_args=connect_args,
    )
    hosts = Hosts.of(settings.database)

    def connect(dialect: Dialect, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        if hosts is None:
            return _connect(dialect, record, cargs, cparams)
        # Several hosts: one at a time, each with the whole connect timeout (database/hosts.py).
        return hosts.connect_sync(
            lambda host, port: _connect(
                dialect, record, cargs, {**cparams, "host": host, "port": port}
            )
        )

    event.listen(engine.sync_engine, "do_connect", connect)
    event.listen(engine.sync_engine, "checkout", _on_checkout)
    event.listen(engine.sync_engine, "handle_error", _on_error)
    pgbouncer.set_timeout_in_each_transaction(engine, settings)
    return engine


# What asyncpg raises when a connection cannot be made and SQLAlchemy does not wrap: a
# refused or reset socket, no answer in time; and, should one come through untranslated,
# its own errors (the server's refusal: starting up, too many connections; a connection
# lost during the handshake), which is_unavailable then judges by their SQLSTATE.
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError)


def _connect(dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
    """The pool's new connection, as SQLAlchemy makes it; a failure is marked as the
    database's (``database.failures``). SQLAlchemy wraps no socket error or
    timeout raised while connecting (they are not DB-API errors): without the mark, only the
    frames of its traceback would say whose it was, and those do not survive an exception
    shared between requests (a 500 instead of a 503: a crash of the database, issue #23)."""
    try:
        return dialect.connect(*cargs, **cparams)
    except _CONNECT_ERRORS as exc:
        mark_connect_failure(exc)
        raise


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
    if is_broken(driver_error):
        context.is_disconnect = True
