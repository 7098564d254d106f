"""Alembic environment: async engine, batch mode on SQLite, the models' metadata."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event, pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from stockroom.database.hosts import Hosts
from stockroom.db import PGBOUNCER_CONNECT_ARGS
from stockroom.migrations import include_object
from stockroom.models import Base  # every table, registered
from stockroom.settings import SettingsError, load_settings, normalise_database_url

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or load_settings().database_url
    return normalise_database_url(url).render_as_string(hide_password=False)


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=dialect.startswith("sqlite"),
        compare_type=True,
        include_object=include_object,
        literal_binds=connection is None,
    )


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = _database_url()
    # Migrations run rarely, on one short-lived connection: skipping the prepared statement
    # cache costs nothing and lets them run through PgBouncer in transaction mode too.
    connect_args = PGBOUNCER_CONNECT_ARGS if url.startswith("postgresql") else {}
    hosts = Hosts.of(make_url(url))
    if hosts is not None:
        # A primary and its standbys (failover): each host with the settings' connect
        # timeout (asyncpg's own default is 60 s), the hosts one at a time (database/hosts.py).
        try:
            timeout = load_settings().database_connect_timeout
        except SettingsError:
            timeout = 5.0
        connect_args = {**connect_args, "timeout": timeout}
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    if hosts is not None:
        several = hosts

        def each_host(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            def attempt(host: str, port: int) -> Any:
                return dialect.connect(*cargs, **(cparams | {"host": host, "port": port}))

            return several.connect_sync(attempt)

        event.listen(engine.sync_engine, "do_connect", each_host)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
