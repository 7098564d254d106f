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
from stockroom.files.schemas import ImportReport, ValidRow
from stockroom.items.models import Item
from stockroom.items.repository import ItemFilter, ItemRepository, Keyset

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
_BATCH_COLUMNS = ValidRow._fields

# Every statement below reaches items and the sku table through their indexes, row by row
# (a LATERAL lookup, ON CONFLICT): the planner would otherwise hash-join a 5,000-row batch
# against a full scan of a million-row table, once per batch, and an import would slow down
# as the table grows.

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


_STOCK_EVENTS = _events(
    "stock.adjusted",
    "SELECT gen_random_uuid()::text AS event_id, l.* FROM ledger l ORDER BY l.id",
    _adjustment_json("e"),
    "e.created_at",
)


# Rows whose sku came earlier in the file (in this batch or a batch before): dropped from the
# batch and returned, with the line where the sku came first. Inserted in sku order: a
# b-tree fills faster in order.
_DUPLICATES = """
WITH first AS (
    INSERT INTO stockroom_import_skus (sku, line)
    SELECT sku, min(line) FROM stockroom_import_rows GROUP BY sku ORDER BY sku
    ON CONFLICT (sku) DO NOTHING
    RETURNING sku, line
)
DELETE FROM stockroom_import_rows r
WHERE NOT EXISTS (SELECT 1 FROM first f WHERE f.sku = r.sku AND f.line = r.line)
RETURNING r.line, r.sku, coalesce(
    (SELECT s.line FROM stockroom_import_skus s WHERE s.sku = r.sku),
    (SELECT f.line FROM first f WHERE f.sku = r.sku)
)"""

# New items first, in file order, with an `import` adjustment for their starting stock and
# their events (item.created, stock.adjusted); they
# leave the batch table, so that what stays there is the items that exist. A sku that exists
# (or that another request is creating: ON CONFLICT waits for it) conflicts and stays.
_INSERT = f"""
WITH created AS (
    INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at)
    SELECT r.sku, r.name, r.name_key, r.description, r.price_cents, coalesce(r.quantity, 0), 1,
           :now, :now
    FROM stockroom_import_rows r
    ORDER BY r.line
    ON CONFLICT (sku) DO NOTHING
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
    {_STOCK_EVENTS}
), done AS (
    DELETE FROM stockroom_import_rows r USING created c WHERE r.sku = c.sku
)
SELECT count(*) FROM created"""

# Then the items that exist: lock them (in sku order, so concurrent imports cannot
# deadlock), update what differs, and write an `import` adjustment where the quantity
# changes; events: item.updated where name, description or price changed, stock.adjusted
# per ledger row.
_UPDATE = f"""
WITH current AS (
    SELECT i.id, i.quantity AS old_quantity, i.name AS old_name,
           i.description AS old_description, i.price_cents AS old_price_cents,
           r.name, r.name_key, r.description, r.price_cents, r.quantity
    FROM (SELECT * FROM stockroom_import_rows ORDER BY sku) r
    CROSS JOIN LATERAL (
        SELECT id, quantity, name, description, price_cents FROM items
        WHERE items.sku = r.sku FOR UPDATE
    ) i
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
    {_STOCK_EVENTS}
)
SELECT (SELECT count(*) FROM current), (SELECT count(*) FROM changed)"""


async def _copy_batch(session: AsyncSession, rows: Sequence[ValidRow]) -> None:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    await session.execute(text("TRUNCATE stockroom_import_rows"))
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        "stockroom_import_rows", columns=_BATCH_COLUMNS, records=rows
    )


async def first_time_seen(
    session: AsyncSession, rows: list[ValidRow], report: ImportReport
) -> list[ValidRow]:
    """COPY the batch into stockroom_import_rows, drop (and report) the rows whose sku came
    earlier in the file; returns the others."""
    await _copy_batch(session, rows)
    dropped = sorted(tuple(row) for row in await session.execute(text(_DUPLICATES)))
    for line, sku, first_line in dropped:
        report.fail(line, f"sku {sku!r} appears again (first on line {first_line})")
    if not dropped:
        return rows
    gone = {line for line, _, _ in dropped}
    return [row for row in rows if row.line not in gone]


async def upsert(session: AsyncSession, rows: Sequence[ValidRow], counts: Counts) -> None:
    """The batch is already in stockroom_import_rows (see first_time_seen)."""
    params = {"now": utcnow(), "reason": REASON_IMPORT}
    created = (await session.execute(text(_INSERT), params)).scalar_one()
    matched = changed = 0
    if created < len(rows):  # some exist
        matched, changed = (await session.execute(text(_UPDATE), params)).one()
    if matched + created != len(rows):
        # Another request deleted one of these items between the two statements.
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
