"""Items on SQLite: SQLAlchemy Core on the engine's connections (SQLite runs in the
process: there is no round trip to save, and statements are simple to keep as Core).

Its write lock is the database's, taken at the start of every write transaction, so the
"for update" reads here need no lock of their own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from stockroom.database._sqlite import SqliteDatabase
from stockroom.db import is_unique_violation
from stockroom.errors import DuplicateError
from stockroom.events._sqlite import SqliteEventStore
from stockroom.events.log import event_row
from stockroom.items.common import crossed_low
from stockroom.items.event_types import ITEM_CREATED, ITEM_UPDATED, STOCK_ADJUSTED, STOCK_LOW
from stockroom.items.models import Adjustment, AdjustmentRow, Count, Item, ItemRow, Summary
from stockroom.items.repository import (
    ITEM_TABLE_COLUMNS,
    SUMMARY_SQL,
    SUMMARY_VALUE_SPLIT,
    Listing,
)
from stockroom.items.schemas import MAX_QUANTITY, adjustment_json, item_json
from stockroom.items.store import BatchCounts, ImportBatch, NewItem, ValidRow

__all__ = ["SqliteItemStore"]

REASON_IMPORT = "import"
_ITEMS = Item.metadata.tables["items"]
_ADJUSTMENTS = Adjustment.metadata.tables["adjustments"]
_ADJUSTMENT_COLUMNS = tuple(_ADJUSTMENTS.columns)

# Built once: building expressions again for every request costs more than running them.
_GET = select(*ITEM_TABLE_COLUMNS).where(Item.id == bindparam("item_id"))
_NEW_QUANTITY = cast(Item.quantity, BigInteger) + bindparam("delta")  # no integer overflow
_ADD_STOCK = (
    update(_ITEMS)
    .where(Item.id == bindparam("item_id"), _NEW_QUANTITY >= 0, _NEW_QUANTITY <= MAX_QUANTITY)
    .values(quantity=_NEW_QUANTITY, version=Item.version + 1, updated_at=bindparam("now"))
    .returning(*ITEM_TABLE_COLUMNS)
)
_SUMMARY = text(SUMMARY_SQL)
_QUANTITY = select(Item.quantity).where(Item.id == bindparam("item_id"))
_INSERT = insert(_ITEMS).returning(*ITEM_TABLE_COLUMNS)
_DELETE = delete(_ITEMS).where(Item.id == bindparam("item_id"))
_INSERT_ADJUSTMENT = insert(_ADJUSTMENTS).returning(*_ADJUSTMENT_COLUMNS)

# Skus seen so far in this import, kept by the database instead of in memory.
_seen = Table(
    "stockroom_import_skus",
    MetaData(),
    Column("sku", String(64), primary_key=True),
    Column("line", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


class SqliteItemStore:
    def __init__(self, database: SqliteDatabase, events: SqliteEventStore) -> None:
        self._db = database
        self._events = events

    # --- reads ----------------------------------------------------------------------------
    async def get(self, item_id: int) -> ItemRow | None:
        async def query(connection: AsyncConnection) -> ItemRow | None:
            row = (await connection.execute(_GET, {"item_id": item_id})).first()
            return None if row is None else ItemRow(*row)

        return await self._db.read_caught_up(query)

    async def page(self, listing: Listing) -> Sequence[ItemRow]:
        async def query(connection: AsyncConnection) -> list[ItemRow]:
            result = await connection.execute(listing.select(), listing.params())
            return [ItemRow(*row) for row in result]

        return await self._db.read_caught_up(query)

    async def count(self, listing: Listing, *, exact: bool = False) -> Count:
        # Always exact: SQLite is the embedded database of small catalogues (docs/scaling.md).
        async def query(connection: AsyncConnection) -> Count:
            result = await connection.execute(listing.count(), listing.where.params())
            return Count(int(result.scalar_one()), True)

        return await self._db.read_caught_up(query)

    async def summary(self) -> Summary:
        async def query(connection: AsyncConnection) -> Summary:
            items, units, value_high, value_low, out, low = (
                await connection.execute(_SUMMARY)
            ).one()
            return Summary(items, units, value_high * SUMMARY_VALUE_SPLIT + value_low, out, low)

        return await self._db.read_caught_up(query)

    async def fold_totals(self) -> None:
        """Nothing: SQLite sums the table (docs/scaling.md)."""

    async def adjustments(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[AdjustmentRow] | None:
        stmt = select(*_ADJUSTMENT_COLUMNS).where(Adjustment.item_id == item_id)
        if before_id is not None:
            stmt = stmt.where(Adjustment.id < before_id)
        stmt = stmt.order_by(Adjustment.id.desc()).limit(limit)

        async def query(connection: AsyncConnection) -> list[AdjustmentRow] | None:
            rows = [AdjustmentRow(*row) for row in await connection.execute(stmt)]
            if not rows and (await connection.execute(_GET, {"item_id": item_id})).first() is None:
                return None
            return rows

        return await self._db.read_caught_up(query)

    async def history(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[tuple[int, float, int]] | None:
        rows = await self.adjustments(item_id, before_id, limit)
        if rows is None:
            return None
        return [(row.id, row.created_at.timestamp(), row.quantity_after) for row in rows]

    async def export_rows(self, listing: Listing, chunk: int) -> AsyncIterator[Sequence[ItemRow]]:
        async with self._db.connection() as connection:
            result = await connection.stream(
                listing.select().execution_options(yield_per=chunk), listing.params()
            )
            async for rows in result.partitions():
                yield [ItemRow(*row) for row in rows]

    def export_csv(self, listing: Listing) -> None:
        """SQLite has no COPY: the export formats the rows itself."""
        return None

    # --- writes ---------------------------------------------------------------------------
    async def lock(self, connection: AsyncConnection, item_id: int) -> ItemRow | None:
        row = (await connection.execute(_GET, {"item_id": item_id})).first()
        return None if row is None else ItemRow(*row)

    async def insert(
        self, connection: AsyncConnection, item: NewItem, reason: str
    ) -> tuple[ItemRow, AdjustmentRow | None]:
        values = {**item._asdict(), "version": 1, "updated_at": item.created_at}
        async with _unique_sku(item.sku):
            row = ItemRow(*(await connection.execute(_INSERT, values)).one())
        if row.quantity <= 0:
            return row, None
        (initial,) = await self._insert_adjustments(
            connection, [(row.id, row.quantity, reason, row.quantity, row.created_at)]
        )
        return row, initial

    async def update(
        self, connection: AsyncConnection, item_id: int, changes: dict[str, Any], now: dt.datetime
    ) -> ItemRow:
        stmt = (
            update(_ITEMS)
            .where(Item.id == item_id)
            .values(**changes, version=Item.version + 1, updated_at=now)
            .returning(*ITEM_TABLE_COLUMNS)
        )
        async with _unique_sku(changes.get("sku", "")):
            row = (await connection.execute(stmt)).one()
        return ItemRow(*row)

    async def delete(self, connection: AsyncConnection, item_id: int) -> None:
        await connection.execute(_DELETE, {"item_id": item_id})

    async def add_stock(
        self,
        connection: AsyncConnection,
        item_id: int,
        delta: int,
        reason: str | None,
        now: dt.datetime,
    ) -> tuple[AdjustmentRow, ItemRow] | None:
        result = await connection.execute(
            _ADD_STOCK, {"item_id": item_id, "delta": delta, "now": now}
        )
        row = result.one_or_none()
        if row is None:
            return None
        item = ItemRow(*row)
        (adjustment,) = await self._insert_adjustments(
            connection, [(item_id, delta, reason, item.quantity, now)]
        )
        return adjustment, item

    async def quantity_for_update(self, connection: AsyncConnection, item_id: int) -> int | None:
        quantity: int | None = (
            await connection.execute(_QUANTITY, {"item_id": item_id})
        ).scalar_one_or_none()
        return quantity

    async def _insert_adjustments(
        self,
        connection: AsyncConnection,
        rows: Sequence[tuple[int, int, str | None, int, dt.datetime]],
    ) -> list[AdjustmentRow]:
        if not rows:
            return []
        keys = ("item_id", "delta", "reason", "quantity_after", "created_at")
        values = [dict(zip(keys, row, strict=True)) for row in rows]
        if len(values) == 1:
            result = await connection.execute(_INSERT_ADJUSTMENT, values[0])
            return [AdjustmentRow(*result.one())]
        return [AdjustmentRow(*row) for row in await _insert_many(connection, _ADJUSTMENTS, values)]

    # --- imports --------------------------------------------------------------------------
    async def begin_import(self, connection: AsyncConnection) -> None:
        await connection.run_sync(lambda sync: _seen.create(sync))

    async def end_import(self, connection: AsyncConnection) -> None:
        await connection.run_sync(lambda sync: _seen.drop(sync, checkfirst=True))

    def prepare_batch(self, rows: Sequence[ValidRow], now: dt.datetime) -> ImportBatch:
        return ImportBatch(rows, now)

    async def upsert_batch(self, connection: AsyncConnection, batch: ImportBatch) -> BatchCounts:
        rows, now = batch.rows, batch.now
        counts = BatchCounts(repeated=[])
        unique = await _first_time_seen(connection, rows, counts)
        if unique:
            await self._upsert(connection, unique, now, counts)
        return counts

    async def _upsert(
        self,
        connection: AsyncConnection,
        rows: Sequence[ValidRow],
        now: dt.datetime,
        counts: BatchCounts,
    ) -> None:
        """The rules of items.writer, for a batch: a change bumps the version, a quantity
        change writes a ledger row; events item.created, item.updated (name, description,
        price or reorder point changed), stock.adjusted and, after them, stock.low (an
        existing item the row took to at or below its reorder point)."""
        skus = [row.sku for row in rows]
        existing = {
            item.sku: item
            for item in (
                ItemRow(*row)
                for row in await connection.execute(
                    select(*ITEM_TABLE_COLUMNS).where(Item.sku.in_(skus))
                )
            )
        }
        events: list[dict[str, Any]] = []
        low: list[dict[str, Any]] = []  # written after the others
        ledger: list[tuple[int, int, str | None, int, dt.datetime]] = []
        new = [row for row in rows if row.sku not in existing]
        if new:
            # One executemany, in file order (see _insert_many).
            values = [
                {
                    "sku": row.sku, "name": row.name, "name_key": row.name_key,
                    "description": row.description, "price_cents": row.price_cents,
                    "quantity": row.quantity or 0, "version": 1, "created_at": now,
                    "updated_at": now, "reorder_point": row.reorder_point,
                }
                for row in new
            ]  # fmt: skip
            for item in (ItemRow(*r) for r in await _insert_many(connection, _ITEMS, values)):
                events.append(event_row(ITEM_CREATED, item_json(item).decode(), now))
                if item.quantity:
                    ledger.append((item.id, item.quantity, REASON_IMPORT, item.quantity, now))
            counts.created += len(new)
        # Updates grouped by the columns they change: one executemany per group.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        before: dict[int, ItemRow] = {}
        for row in rows:
            current = existing.get(row.sku)
            if current is None:
                continue
            change = _changes(current, row)
            if not change:
                counts.unchanged += 1
                continue
            before[current.id] = current
            groups.setdefault(tuple(change), []).append(
                {"b_id": current.id, "b_version": current.version + 1, **change}
            )
            counts.updated += 1
        for columns, changes in groups.items():
            stmt = (
                update(_ITEMS)
                .where(Item.id == bindparam("b_id"))
                .values(
                    {name: bindparam(name) for name in columns}
                    | {"version": bindparam("b_version"), "updated_at": now}
                )
            )
            await connection.execute(stmt, changes)
        if before:
            updated = await connection.execute(
                select(*ITEM_TABLE_COLUMNS).where(Item.id.in_(sorted(before))).order_by(Item.id)
            )
            for item in (ItemRow(*r) for r in updated):
                old = before[item.id]
                payload = item_json(item).decode()
                if (item.name, item.description, item.price_cents, item.reorder_point) != (
                    old.name, old.description, old.price_cents, old.reorder_point,
                ):  # fmt: skip
                    events.append(event_row(ITEM_UPDATED, payload, now))
                if item.quantity != old.quantity:
                    delta = item.quantity - old.quantity
                    ledger.append((item.id, delta, REASON_IMPORT, item.quantity, now))
                if crossed_low(old, item):
                    low.append(event_row(STOCK_LOW, payload, now))
        for adjustment in await self._insert_adjustments(connection, ledger):
            events.append(event_row(STOCK_ADJUSTED, adjustment_json(adjustment).decode(), now))
        await self._events.append(connection, events + low)


def _changes(current: ItemRow, row: ValidRow) -> dict[str, Any]:
    change: dict[str, Any] = {}
    if row.name != current.name:
        change["name"] = row.name
        change["name_key"] = row.name_key
    if row.description != current.description:
        change["description"] = row.description
    if row.price_cents != current.price_cents:
        change["price_cents"] = row.price_cents
    if row.quantity is not None and row.quantity != current.quantity:
        change["quantity"] = row.quantity
    if row.has_reorder_point and row.reorder_point != current.reorder_point:
        change["reorder_point"] = row.reorder_point
    return change


async def _first_time_seen(
    connection: AsyncConnection, rows: Sequence[ValidRow], counts: BatchCounts
) -> list[ValidRow]:
    """Drop (and note) rows whose sku came earlier in the file."""
    assert counts.repeated is not None
    skus = {row.sku for row in rows}
    found = await connection.execute(select(_seen.c.sku, _seen.c.line).where(_seen.c.sku.in_(skus)))
    first: dict[str, int] = {row[0]: row[1] for row in found}  # from earlier batches
    unique: list[ValidRow] = []
    for row in rows:
        if row.sku in first:
            counts.repeated.append((row.line, row.sku, first[row.sku]))
        else:
            first[row.sku] = row.line
            unique.append(row)
    if unique:
        await connection.execute(insert(_seen), [{"sku": r.sku, "line": r.line} for r in unique])
    return unique


@asynccontextmanager
async def _unique_sku(sku: str) -> AsyncIterator[None]:
    """Turns a unique violation on ``sku`` into a 409."""
    try:
        yield
    except IntegrityError as exc:
        if is_unique_violation(exc):
            raise DuplicateError(f"An item with sku {sku!r} already exists.") from None
        raise


async def _insert_many(
    connection: AsyncConnection, table: Table, values: list[dict[str, Any]]
) -> Sequence[Sequence[Any]]:
    """Insert ``values`` with one executemany and return the rows as inserted, in order.

    Not INSERT ... RETURNING: to return rows in parameter order, SQLAlchemy runs that as one
    INSERT per row on SQLite (it has no sentinel to sort a multi-row INSERT's RETURNING by),
    a thread hop each: ten times slower. The ids are AUTOINCREMENT and the write lock is held
    since the transaction began, so the new rows are those above the largest id before.
    """
    (key,) = table.primary_key.columns
    last = (await connection.execute(select(func.coalesce(func.max(key), 0)))).scalar_one()
    await connection.execute(insert(table), values)
    written = (
        await connection.execute(select(*table.columns).where(key > last).order_by(key))
    ).all()
    assert len(written) == len(values), "another writer inside the write lock"
    return written
