"""Migrations build exactly the schema the models describe, on both databases, and revert."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from stockroom.migrations import alembic_config, upgrade_async
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


# --- 0007: 64-bit ids ---------------------------------------------------------------------

_ID_COLUMNS = [("adjustments", "id"), ("adjustments", "item_id"), ("items", "id")]
_SEED = [
    "INSERT INTO items (sku, name, name_key, price_cents, quantity, version, created_at, "
    "updated_at) VALUES "
    "('A-1', 'Widget', 'widget', 1999, 5, 2, '2026-12-01 10:00:00+00', '2026-12-01 10:00:00+00'),"
    "('A-2', 'Gadget', 'gadget', 500, 0, 1, '2026-12-01 11:00:00+00', '2026-12-01 11:00:00+00')",
    "INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at) VALUES "
    "(1, 7, 'received', 7, '2026-12-01 10:00:00+00'),"
    "(1, -2, 'sold', 5, '2026-12-01 10:30:00+00')",
]
_ROWS = [
    "SELECT id, sku, quantity, version FROM items ORDER BY id",
    "SELECT id, item_id, delta, quantity_after FROM adjustments ORDER BY id",
]


async def _execute(url: str, statements: list[str]) -> list[list[tuple[Any, ...]]]:
    """Runs ``statements`` in one transaction; the rows of each."""
    engine = create_async_engine(url)
    try:
        results: list[list[tuple[Any, ...]]] = []
        async with engine.begin() as connection:
            if connection.dialect.name == "sqlite":  # as the app's connections have it
                await connection.execute(text("PRAGMA foreign_keys = ON"))
            for sql in statements:
                result = await connection.execute(text(sql))
                results.append([tuple(row) for row in result.all()] if result.returns_rows else [])
        return results
    finally:
        await engine.dispose()


async def _id_types(url: str) -> dict[str, str]:
    """The id columns' and their sequences' types on PostgreSQL, by name."""
    columns = await _execute(
        url,
        [
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (table_name, column_name) IN "
            "(('items', 'id'), ('adjustments', 'id'), ('adjustments', 'item_id'))",
            "SELECT sequence_name, data_type || ' ' || maximum_value "
            "FROM information_schema.sequences "
            "WHERE sequence_name IN ('items_id_seq', 'adjustments_id_seq')",
        ],
    )
    return dict(columns[0] + columns[1])


async def _new_database(backend: str, tmp_path: Any) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/bigint.db"
    return await create_pg_database()


_BIGINT = {
    "items.id": "bigint",
    "adjustments.id": "bigint",
    "adjustments.item_id": "bigint",
    "items_id_seq": "bigint 9223372036854775807",
    "adjustments_id_seq": "bigint 9223372036854775807",
}
_INTEGER = {
    "items.id": "integer",
    "adjustments.id": "integer",
    "adjustments.item_id": "integer",
    "items_id_seq": "integer 2147483647",
    "adjustments_id_seq": "integer 2147483647",
}


async def test_upgrade_to_bigint_ids_keeps_the_rows(backend: str, tmp_path: Any) -> None:
    url = await _new_database(backend, tmp_path)
    try:
        await upgrade_async(url, "0006")
        before = await _execute(url, [*_SEED, *_ROWS])
        assert before[2] == [(1, "A-1", 5, 2), (2, "A-2", 0, 1)]
        assert before[3] == [(1, 1, 7, 7), (2, 1, -2, 5)]

        await upgrade_async(url, "0007")

        assert await _execute(url, _ROWS) == before[2:]
        if backend == "postgresql":
            assert await _id_types(url) == _BIGINT
        assert await _schema_diff(url) == []
        # The sequences carry on where they were, and the foreign key still cascades.
        after = await _execute(
            url,
            [
                "INSERT INTO items (sku, name, name_key, price_cents, quantity, version, "
                "created_at, updated_at) VALUES ('A-3', 'Gizmo', 'gizmo', 1, 1, 1, "
                "'2026-12-02 10:00:00+00', '2026-12-02 10:00:00+00')",
                "INSERT INTO adjustments (item_id, delta, quantity_after, created_at) "
                "VALUES (3, 1, 1, '2026-12-02 10:00:00+00')",
                "DELETE FROM items WHERE id = 1",
                *_ROWS,
            ],
        )
        assert after[3] == [(2, "A-2", 0, 1), (3, "A-3", 1, 1)]
        assert after[4] == [(3, 3, 1, 1)]
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)


async def test_downgrade_from_bigint_ids(backend: str, tmp_path: Any) -> None:
    url = await _new_database(backend, tmp_path)
    try:
        await upgrade_async(url)
        if backend == "postgresql":
            assert await _id_types(url) == _BIGINT
        await _run(command.downgrade, alembic_config(url), "0006")
        if backend == "postgresql":
            assert await _id_types(url) == _INTEGER
        rows = await _execute(url, [*_SEED, *_ROWS])
        assert rows[2:] == [
            [(1, "A-1", 5, 2), (2, "A-2", 0, 1)],
            [(1, 1, 7, 7), (2, 1, -2, 5)],
        ]
        await upgrade_async(url)
        assert await _schema_diff(url) == []
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)
