"""PostgreSQL fast paths of files: COPY in (a batch into a temporary table, then a few
set-based statements) and COPY out (the export's CSV written by the server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import literal_column, text
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import utcnow
from stockroom.files.schemas import ImportReport, ImportRow
from stockroom.items.models import Item, fold_name
from stockroom.items.repository import ItemFilter, ItemRepository, Keyset
from stockroom.items.service import to_cents

__all__ = [
    "CREATE_BATCH_TABLE",
    "DROP_BATCH_TABLE",
    "REASON_IMPORT",
    "Counts",
    "RaceError",
    "copy_csv",
    "first_time_seen",
    "upsert",
]

REASON_IMPORT = "import"


class RaceError(Exception):
    """A sku of the batch appeared (another request) while the batch was being applied."""


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


# --- PostgreSQL: COPY each batch into a temporary table, then a few set-based statements --

CREATE_BATCH_TABLE = """
CREATE TEMPORARY TABLE stockroom_import_rows (
    line integer NOT NULL, sku varchar(64) NOT NULL, name varchar(200) NOT NULL,
    name_key text COLLATE "C" NOT NULL, description text, price_cents bigint NOT NULL,
    quantity integer
)"""
_BATCH_COLUMNS = ("line", "sku", "name", "name_key", "description", "price_cents", "quantity")

# Rows whose sku came earlier in the file (in this batch or a batch before): reported.
_DUPLICATES = """
WITH first AS (
    INSERT INTO stockroom_import_skus (sku, line)
    SELECT sku, min(line) FROM stockroom_import_rows GROUP BY sku
    ON CONFLICT (sku) DO NOTHING
    RETURNING sku, line
), seen AS (
    SELECT sku, line FROM first
    UNION ALL
    SELECT s.sku, s.line FROM stockroom_import_skus s
    WHERE s.sku IN (SELECT sku FROM stockroom_import_rows) AND s.sku NOT IN (SELECT sku FROM first)
), dropped AS (
    DELETE FROM stockroom_import_rows r USING seen
    WHERE r.sku = seen.sku AND r.line <> seen.line
    RETURNING r.line, r.sku, seen.line AS first_line
)
SELECT line, sku, first_line FROM dropped ORDER BY line"""

# The export's CSV written by PostgreSQL itself: the same cells as service._format writes.
_UTC_TEXT = (
    "CASE WHEN extract(microseconds FROM {c})::bigint % 1000000 = 0 "
    "THEN to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "ELSE to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
)


# Events as the API writes them, made by the server in the same statement (see events.log):
# the body is {"id", "type", "created_at", "data"} with `data` the API's item or adjustment.
def _utc(column: str) -> str:
    return _UTC_TEXT.format(c=column)


def _item_json(row: str) -> str:
    return (
        f"jsonb_build_object('id', {row}.id, 'sku', {row}.sku, 'name', {row}.name, "
        f"'description', {row}.description, "
        f"'price', to_char({row}.price_cents / 100.0, 'FM9999999990.00'), "
        f"'quantity', {row}.quantity, 'version', {row}.version, "
        f"'created_at', {_utc(row + '.created_at')}, 'updated_at', {_utc(row + '.updated_at')})"
    )


def _adjustment_json(row: str) -> str:
    return (
        f"jsonb_build_object('id', {row}.id, 'item_id', {row}.item_id, 'delta', {row}.delta, "
        f"'reason', {row}.reason, 'quantity_after', {row}.quantity_after, "
        f"'created_at', {_utc(row + '.created_at')})"
    )


def _events(kind: str, rows: str, data: str, at: str) -> str:
    """INSERT of one ``kind`` event per row of ``rows`` (a query aliased ``e``, with a
    fresh ``event_id`` column)."""
    body = (
        f"jsonb_build_object('id', e.event_id, 'type', '{kind}', 'created_at', {_utc(at)}, "
        f"'data', {data})::text"
    )
    return (
        f"INSERT INTO events (id, type, body, created_at) "
        f"SELECT e.event_id, '{kind}', {body}, {at} FROM ({rows}) e"
    )


# Existing items: lock them (in id order, so concurrent imports cannot deadlock), update
# what differs, and write an `import` adjustment where the quantity changes; then the events:
# item.updated where name, description or price changed, stock.adjusted per ledger row.
_UPDATE = f"""
WITH current AS (
    SELECT i.id, i.quantity AS old_quantity, i.name AS old_name,
           i.description AS old_description, i.price_cents AS old_price_cents, r.*
    FROM items i JOIN stockroom_import_rows r ON r.sku = i.sku
    ORDER BY i.id
    FOR UPDATE OF i
), changed AS (
    UPDATE items i SET
        name = c.name, name_key = c.name_key, description = c.description,
        price_cents = c.price_cents, quantity = coalesce(c.quantity, i.quantity),
        version = i.version + 1, updated_at = :now
    FROM current c
    WHERE i.id = c.id AND (i.name, i.description, i.price_cents, i.quantity)
        IS DISTINCT FROM (c.name, c.description, c.price_cents, coalesce(c.quantity, i.quantity))
    RETURNING i.*
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT ch.id, ch.quantity - c.old_quantity, :reason, ch.quantity, :now
    FROM changed ch JOIN current c ON c.id = ch.id
    WHERE ch.quantity <> c.old_quantity
    ORDER BY ch.id
    RETURNING *
), updated_events AS (
    {
    _events(
        "item.updated",
        "SELECT gen_random_uuid()::text AS event_id, ch.* FROM changed ch JOIN current c "
        "ON c.id = ch.id WHERE (ch.name, ch.description, ch.price_cents) IS DISTINCT FROM "
        "(c.old_name, c.old_description, c.old_price_cents) ORDER BY ch.id",
        _item_json("e"),
        "e.updated_at",
    )
}
), stock_events AS (
    {
    _events(
        "stock.adjusted",
        "SELECT gen_random_uuid()::text AS event_id, l.* FROM ledger l ORDER BY l.id",
        _adjustment_json("e"),
        "e.created_at",
    )
}
)
SELECT (SELECT count(*) FROM current), (SELECT count(*) FROM changed)"""

# New items, in file order, with an `import` adjustment for their starting stock, and their
# events: item.created, then stock.adjusted for the starting stock.
_INSERT = f"""
WITH created AS (
    INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at)
    SELECT r.sku, r.name, r.name_key, r.description, r.price_cents, coalesce(r.quantity, 0), 1,
           :now, :now
    FROM stockroom_import_rows r
    WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.sku = r.sku)
    ORDER BY r.line
    RETURNING *
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT id, quantity, :reason, quantity, :now FROM created WHERE quantity > 0 ORDER BY id
    RETURNING *
), created_events AS (
    {
    _events(
        "item.created",
        "SELECT gen_random_uuid()::text AS event_id, c.* FROM created c ORDER BY c.id",
        _item_json("e"),
        "e.updated_at",
    )
}
), stock_events AS (
    {
    _events(
        "stock.adjusted",
        "SELECT gen_random_uuid()::text AS event_id, l.* FROM ledger l ORDER BY l.id",
        _adjustment_json("e"),
        "e.created_at",
    )
}
)
SELECT count(*) FROM created"""


async def _copy_batch(session: AsyncSession, rows: Sequence[tuple[int, ImportRow]]) -> None:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    await session.execute(text("TRUNCATE stockroom_import_rows"))
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        "stockroom_import_rows",
        columns=_BATCH_COLUMNS,
        records=[
            (line, r.sku, r.name, fold_name(r.name), r.description, to_cents(r.price), r.quantity)
            for line, r in rows
        ],
    )


async def first_time_seen(
    session: AsyncSession, rows: list[tuple[int, ImportRow]], report: ImportReport
) -> list[tuple[int, ImportRow]]:
    await _copy_batch(session, rows)
    dropped = (await session.execute(text(_DUPLICATES))).all()
    for line, sku, first_line in dropped:
        report.fail(line, f"sku {sku!r} appears again (first on line {first_line})")
    gone = {line for line, _, _ in dropped}
    return [(line, row) for line, row in rows if line not in gone]


async def upsert(
    session: AsyncSession, rows: Sequence[tuple[int, ImportRow]], counts: Counts
) -> None:
    """The batch is already in stockroom_import_rows (see first_time_seen)."""
    params = {"now": utcnow(), "reason": REASON_IMPORT}
    matched, changed = (await session.execute(text(_UPDATE), params)).one()
    created = (await session.execute(text(_INSERT), params)).scalar_one()
    if matched + created != len(rows):
        # Another request created one of these skus between the two statements.
        raise RaceError
    counts.created += created
    counts.updated += changed
    counts.unchanged += matched - changed


DROP_BATCH_TABLE = "DROP TABLE IF EXISTS stockroom_import_rows"


def _protected(column: str) -> Any:
    """SQL for the cell as service._format writes it: an apostrophe before formula starts."""
    apostrophe = "''''"  # a SQL string literal holding one apostrophe
    starts = f"'=', '+', '-', '@', E'\\t', E'\\r', {apostrophe}"
    return literal_column(
        f"CASE WHEN left({column}, 1) IN ({starts}) THEN {apostrophe} || {column} ELSE {column} END"
    )


def _copy_columns() -> list[Any]:
    return [
        Item.id,
        _protected("items.sku").label("sku"),
        _protected("items.name").label("name"),
        _protected("items.description").label("description"),
        literal_column("to_char(items.price_cents / 100.0, 'FM9999999990.00')").label("price"),
        Item.quantity,
        Item.version,
        literal_column(_UTC_TEXT.format(c="items.created_at")).label("created_at"),
        literal_column(_UTC_TEXT.format(c="items.updated_at")).label("updated_at"),
    ]


async def copy_csv(
    session: AsyncSession, where: ItemFilter, keyset: Keyset
) -> AsyncIterator[bytes]:
    stmt = ItemRepository(session).export_select(where, keyset, _copy_columns())
    connection = await session.connection()
    compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    args = [compiled.params[name] for name in compiled.positiontup or ()]
    driver = (await connection.get_raw_connection()).driver_connection
    # A small queue between COPY and the response: COPY waits while the client is slow.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    async def copy() -> None:
        try:
            await driver.copy_from_query(  # type: ignore[union-attr]
                compiled.string, *args, output=queue.put, format="csv", header=True
            )
        finally:
            await queue.put(None)

    producer = asyncio.create_task(copy())
    try:
        while (chunk := await queue.get()) is not None:
            yield bytes(chunk)  # asyncpg hands out bytearrays
        await producer
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
