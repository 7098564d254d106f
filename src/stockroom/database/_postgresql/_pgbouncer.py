"""Everything that differs through PgBouncer in transaction mode
(``STOCKROOM_DATABASE_PGBOUNCER``), in one place.

In transaction mode PgBouncer hands each transaction to whichever server connection is free,
so nothing may rely on a session outliving its transaction. The differences, and where each
is applied:

1. **No statement timeout nor JIT setting at connect**: PgBouncer refuses startup parameters
   it does not know (:func:`server_settings`, both pools).
2. **Both are set in every transaction instead** (``SET LOCAL``, whose effect
   ends with the transaction; a session ``SET`` would stick to one server connection only):
   :func:`set_timeout` is run after BEGIN by the requests' transactions
   (``_pool.TransactionLease``, ``PostgresDatabase.write``) and by the engine's
   (:func:`set_timeout_in_each_transaction`).
3. **No prepared statement kept across transactions**: one may be missing on the next
   transaction's server connection. asyncpg's statement cache is off on the requests' pool
   (:func:`statement_cache_size`: every statement prepared anew, unnamed), and the engine
   keeps none either, naming each uniquely (:func:`engine_connect_args`).
4. **Reads run in a transaction**, for the statement timeout's ``SET LOCAL`` (directly, a
   read runs outside any transaction); such a read is not retried on a dead connection
   (``PostgresDatabase.read``).
5. **No session across transactions** (``PostgresDatabase.keeps_sessions`` is False): an
   import that needs its temporary table across batches runs as one transaction.
6. **No LISTEN** (it needs a session): ``PostgresDatabase.listen`` only waits, and the event
   log's readers poll.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.db import PGBOUNCER_CONNECT_ARGS
from stockroom.settings import Settings

__all__ = [
    "engine_connect_args",
    "server_settings",
    "set_timeout",
    "set_timeout_in_each_transaction",
    "statement_cache_size",
]


def server_settings(settings: Settings) -> dict[str, str]:
    """The startup parameters of every connection: directly, the statement timeout and JIT
    off too (compiling a plan's expressions costs more than a short statement saves: a
    COPY of 5,000,000 items waited 60-170 ms for it before its first row)."""
    if settings.database_pgbouncer:
        return {"application_name": "stockroom"}
    return {
        "application_name": "stockroom",
        "statement_timeout": str(_timeout_ms(settings)),
        "jit": "off",
    }


def set_timeout(settings: Settings) -> str | None:
    """The statement each transaction begins with through PgBouncer: the statement timeout
    and JIT off, as ``SET LOCAL`` would (one statement: the engine prepares what it runs, and
    a prepared statement holds one command); None directly, where both came with the
    connection."""
    if settings.database_pgbouncer:
        return (
            f"SELECT set_config('statement_timeout', '{_timeout_ms(settings)}', true), "
            "set_config('jit', 'off', true)"
        )
    return None


def statement_cache_size(settings: Settings) -> int:
    """asyncpg's cache of prepared statements, per connection of the requests' pool."""
    return 0 if settings.database_pgbouncer else 256


def engine_connect_args(settings: Settings) -> dict[str, Any]:
    """The engine's driver options about prepared statements (its defaults directly)."""
    return dict(PGBOUNCER_CONNECT_ARGS) if settings.database_pgbouncer else {}


def set_timeout_in_each_transaction(engine: AsyncEngine, settings: Settings) -> None:
    """Through PgBouncer, every transaction of ``engine`` begins by setting the statement
    timeout; nothing to do directly."""
    statement = set_timeout(settings)
    if statement is None:
        return

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(statement)


def _timeout_ms(settings: Settings) -> int:
    return int(settings.database_statement_timeout * 1000)
