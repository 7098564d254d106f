"""Migrations build exactly the schema the models describe, on both databases, and revert."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from stockroom.migrations import alembic_config
from stockroom.models import Base
from tests.support.databases import create_pg_database, drop_pg_database


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _schema_diff(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_diff)
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    assert await _schema_diff(database_url) == []


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _table_names(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_tables)
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_upgrade_again(backend: str, tmp_path: Any) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/roundtrip.db"
    else:
        url = await create_pg_database()
    try:
        config = alembic_config(url)
        await _run(command.upgrade, config, "head")
        assert "items" in await _table_names(url)
        await _run(command.downgrade, config, "base")
        assert await _table_names(url) <= {"alembic_version"}
        await _run(command.upgrade, config, "head")
        assert await _schema_diff(url) == []
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)


async def _run(step: Any, *args: Any) -> None:
    import asyncio

    await asyncio.to_thread(step, *args)
