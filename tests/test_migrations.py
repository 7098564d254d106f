"""Migrations build exactly the schema the models describe, on both databases, and revert."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, make_url, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from stockroom.items.repository import ItemFilter, Keyset, Listing
from stockroom.migrations import alembic_config, include_object, upgrade_async
from stockroom.models import Base
from tests.support.databases import create_pg_database, drop_pg_database


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
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


# --- 0008: trigram indexes and the catalogue's totals (PostgreSQL) ----------------------------

_TOTALS = [
    "SELECT sum(items), sum(units), sum(value_cents), sum(out_of_stock), sum(low_stock) "
    "FROM item_totals",
    "SELECT count(*), sum(quantity), sum(price_cents * quantity), "
    "count(*) FILTER (WHERE quantity = 0), count(*) FILTER (WHERE quantity <= reorder_point) "
    "FROM items",
]
_SEARCH_INDEXES = (
    "SELECT indexname FROM pg_indexes WHERE tablename = 'items' AND indexdef LIKE '%gin_trgm_ops%' "
    "ORDER BY indexname"
)


async def test_totals_and_search_indexes_start_from_the_rows_there(tmp_path: Any) -> None:
    url = await _new_database("postgresql", tmp_path)
    try:
        await upgrade_async(url, "0007")
        await _execute(url, _SEED)
        await upgrade_async(url, "0008")
        totals, counted = await _execute(url, _TOTALS)
        assert totals == counted == [(2, 5, 9995, 1, 0)]
        indexes = await _execute(url, [_SEARCH_INDEXES])
        assert indexes == [[("ix_items_name_key_trgm",), ("ix_items_sku_trgm",)]]
        assert await _schema_diff(url) == []
        # A write after the migration: the triggers carry the totals on.
        await _execute(url, ["UPDATE items SET quantity = 0, reorder_point = 3 WHERE id = 1"])
        totals, counted = await _execute(url, _TOTALS)
        assert totals == counted == [(2, 0, 0, 2, 1)]

        await _run(command.downgrade, alembic_config(url), "0007")
        assert "item_totals" not in await _table_names(url)
        assert await _execute(url, [_SEARCH_INDEXES]) == [[]]
    finally:
        await drop_pg_database(url)


# --- 0009: one search index (PostgreSQL) -------------------------------------------------------


async def test_search_reads_one_index_on_the_sku_and_the_name(tmp_path: Any) -> None:
    url = await _new_database("postgresql", tmp_path)
    try:
        await upgrade_async(url, "0008")
        await _execute(url, _SEED)
        await upgrade_async(url, "0009")
        assert await _execute(url, [_SEARCH_INDEXES]) == [[("ix_items_search_trgm",)]]
        assert await _schema_diff(url) == []
        # The app's own statement can use the index: its expression is the index's, to the
        # character (else every search reads the whole table).
        listing = Listing(ItemFilter(q="Gadg"), Keyset("id"), None, 50)
        compiled = listing.select().compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
        params = listing.params() | {"limit": 51}
        statement = compiled.string % {
            name: repr(params[name]) for name in compiled.params
        }  # psycopg-style placeholders, filled in for EXPLAIN
        plan = await _execute(url, ["SET LOCAL enable_seqscan = off", "SET LOCAL "
                                    "enable_indexscan = off", "EXPLAIN " + statement])  # fmt: skip
        assert "ix_items_search_trgm" in "\n".join(row[0] for row in plan[2])
        found = await _execute(url, [statement])
        assert [row[1] for row in found[0]] == ["A-2"]

        await _run(command.downgrade, alembic_config(url), "0008")
        indexes = await _execute(url, [_SEARCH_INDEXES])
        assert indexes == [[("ix_items_name_key_trgm",), ("ix_items_sku_trgm",)]]
    finally:
        await drop_pg_database(url)


def _migrate_as(url: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "stockroom", "migrate"],
        env={**env, "STOCKROOM_DATABASE_URL": url, "STOCKROOM_LOG_LEVEL": "warning"},
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_a_role_that_may_not_create_pg_trgm_is_told_what_to_do(tmp_path: Any) -> None:
    """The extension needs CREATE on the database: without it, `stockroom migrate` fails
    with one line saying what the database's owner must run, and changes nothing."""
    url = await _new_database("postgresql", tmp_path)
    database = make_url(url).database
    role = f"stockroom_limited_{uuid.uuid4().hex[:8]}"
    setup = [
        f'CREATE ROLE "{role}" LOGIN',
        f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"',
        f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"',
    ]
    as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
    try:
        await _execute(url, setup)
        done = await asyncio.to_thread(_migrate_as, as_role, tmp_path)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "pg_trgm" in lines[0]
        assert "CREATE EXTENSION pg_trgm;" in lines[0]
        assert "Traceback" not in done.stderr
        # The migrations run in one transaction: nothing was left behind.
        assert await _table_names(url) == set()
        # The owner creates the extension; the same role's migration then goes through.
        await _execute(url, ["CREATE EXTENSION pg_trgm"])
        again = await asyncio.to_thread(_migrate_as, as_role, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "item_totals" in await _table_names(url)
    finally:
        await drop_pg_database(url)
        await _execute(url.rsplit("/", 1)[0] + "/postgres", [f'DROP ROLE IF EXISTS "{role}"'])
