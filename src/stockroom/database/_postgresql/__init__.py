"""PostgreSQL: two pools, owned by the lifespan.

The stores run the requests' statements on asyncpg directly: SQLAlchemy's async execution
path costs more than the statement itself for the hot paths (docs/async.md). asyncpg prepares
each statement once per connection and keeps it (its statement cache), except through
PgBouncer in transaction mode, where a prepared statement may be missing on the next
transaction's server connection: there the cache is off and every statement is prepared
anew, unnamed.

Driver errors that mean "try again later" (no connection in time, a refused or lost
connection, a statement timeout, a server shutting down) leave as :class:`UnavailableError`
(503); anything else is a bug and propagates (500).

The parts, each readable alone:

- ``_database.py``: :class:`PostgresDatabase`, the stores' connections and transactions (the
  ``Database`` protocol), put together from the parts below.
- ``_pool.py``: the requests' pool (asyncpg's, with a first-come-first-served queue in front
  of it) and the leases, the one way a connection is taken and given back, in a transaction
  or not.
- ``_failures.py``: what a driver error means: a broken connection (dropped; a read or a
  BEGIN that met one runs once more), try again later (a 503), or a bug.
- ``_pgbouncer.py``: every difference through PgBouncer in transaction mode.
- ``_engine.py``: the SQLAlchemy engine, the other pool: the background work and the admin
  endpoints.
- ``_listen.py``: the one LISTEN connection that wakes the event log's readers.
"""

from stockroom.database._postgresql._database import PostgresDatabase
from stockroom.database._postgresql._engine import create_engine, unusable_reason

__all__ = ["PostgresDatabase", "create_engine", "unusable_reason"]
