"""Items on PostgreSQL: asyncpg directly, with the SQL text of every statement made once.

asyncpg prepares a statement on first use on a connection and keeps it, so a request sends
only its parameters (not through PgBouncer, see ``database/_postgresql/_pgbouncer.py``). The list's
statements depend on which filters are present: each shape is compiled from
``items.repository`` once, on first use, and kept.

Imports: each batch is COPied into a temporary table, then a few set-based statements
upsert it, write the ledger rows and make the events in the server, from the same field
table as the API's JSON (``items.schemas.ITEM_FIELDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy import literal_column
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from stockroom.database._postgresql import PostgresDatabase
from stockroom.database._postgresql._replicas import REPLICA_FAILURES
from stockroom.database.consistency import REPLAYED
from stockroom.errors import DuplicateError
from stockroom.events._postgresql import UTC_TEXT, PostgresEventStore
from stockroom.items._totals import (
    CUSTOM_PLANS,
    FOLD,
    TOTALS,
    count_from_totals,
    estimate,
    sample_percent,
    summary_of,
)
from stockroom.items.event_types import ITEM_CREATED, ITEM_UPDATED, STOCK_ADJUSTED, STOCK_LOW
from stockroom.items.models import (
    ADJUSTMENT_COLUMNS,
    ITEM_COLUMNS,
    AdjustmentRow,
    Count,
    Item,
    ItemRow,
    Summary,
)
from stockroom.items.repository import COUNT_CAP, ItemFilter, Listing, Shape
from stockroom.items.schemas import ADJUSTMENT_FIELDS, ITEM_FIELDS, MAX_QUANTITY
from stockroom.items.store import BatchCounts, NewItem, ValidRow

__all__ = ["PostgresItemStore"]

REASON_IMPORT = "import"
_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
_COLUMNS = ", ".join(ITEM_COLUMNS)
_ADJ_COLUMNS = ", ".join(ADJUSTMENT_COLUMNS)

_GET = f"SELECT {_COLUMNS} FROM items WHERE id = $1"
# With replicas: the replay position beside the row (NULL on the primary), the answer's token
# without a statement of its own (database/consistency.py, REPLAYED).
_GET_REPLAYED = f"SELECT {_COLUMNS}, pg_last_wal_replay_lsn()::text FROM items WHERE id = $1"
_LOCK = f"SELECT {_COLUMNS} FROM items WHERE id = $1 FOR UPDATE"
# The item and its starting stock's ledger row, in one statement.
_INSERT = f"""
WITH item AS (
    INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at, reorder_point)
    VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7, $8)
    RETURNING {_COLUMNS}
), initial AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT id, quantity, $9, quantity, created_at FROM item WHERE quantity > 0
    RETURNING {_ADJ_COLUMNS}
)
SELECT {", ".join("item." + c for c in ITEM_COLUMNS)},
       {", ".join("initial." + c for c in ADJUSTMENT_COLUMNS)}
FROM item LEFT JOIN initial ON true"""
_ITEM_WIDTH = len(ITEM_COLUMNS)
_DELETE = "DELETE FROM items WHERE id = $1"
# One conditional UPDATE does the check and the change together: concurrent adjustments can
# neither lose an update nor oversell (see items.writer). bigint: no integer overflow.
# The item after the change comes back too: whether it became low (the stock.low event).
_ADD_STOCK = f"""
WITH changed AS (
    UPDATE items SET quantity = quantity + $2, version = version + 1, updated_at = $4
    WHERE id = $1 AND quantity::bigint + $2 BETWEEN 0 AND {MAX_QUANTITY}
    RETURNING {_COLUMNS}
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT id, $2, $3, quantity, $4 FROM changed
    RETURNING {_ADJ_COLUMNS}
)
SELECT {", ".join("ledger." + c for c in ADJUSTMENT_COLUMNS)},
       {", ".join("changed." + c for c in ITEM_COLUMNS)}
FROM ledger CROSS JOIN changed"""
_ADJ_WIDTH = len(ADJUSTMENT_COLUMNS)
_QUANTITY_FOR_UPDATE = "SELECT quantity FROM items WHERE id = $1 FOR UPDATE"
_EXISTS = "SELECT 1 FROM items WHERE id = $1"
_ADJUSTMENTS = (
    f"SELECT {_ADJ_COLUMNS} FROM adjustments WHERE item_id = $1 AND id < $2::bigint "
    "ORDER BY id DESC LIMIT $3"
)
_HISTORY = (
    "SELECT id, extract(epoch FROM created_at)::float8, quantity_after FROM adjustments "
    "WHERE item_id = $1 AND id < $2::bigint ORDER BY id DESC LIMIT $3"
)
_NO_ID_ABOVE = 2**63 - 1  # the largest bigint: every id is below it but the very last one


async def _get_noting_replay(item_id: int, connection: asyncpg.Connection) -> ItemRow | None:
    record = await connection.fetchrow(_GET_REPLAYED, item_id)
    if record is None:
        return None
    REPLAYED.set(record[-1])
    return ItemRow(*record[:-1])


class PostgresItemStore:
    def __init__(self, database: PostgresDatabase, events: PostgresEventStore) -> None:
        self._db = database
        self._events = events
        self._lists: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._capped_counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._sampled_counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._updates: dict[tuple[str, ...], str] = {}

    # --- reads ----------------------------------------------------------------------------
    async def get(self, item_id: int) -> ItemRow | None:
        if self._db.replicas is not None:
            return await self._db.read_caught_up(partial(_get_noting_replay, item_id))

        async def query(connection: asyncpg.Connection) -> ItemRow | None:
            record = await connection.fetchrow(_GET, item_id)
            return None if record is None else ItemRow(*record)

        return await self._db.read_caught_up(query)

    async def page(self, listing: Listing) -> Sequence[ItemRow]:
        sql, args = self._list_statement(listing)

        async def query(connection: asyncpg.Connection) -> list[ItemRow]:
            async with _planned(connection, listing.where):
                return [ItemRow(*record) for record in await connection.fetch(sql, *args)]

        return await self._db.read_caught_up(query)

    async def count(self, listing: Listing, *, exact: bool = False) -> Count:
        where = listing.where
        params = where.params()
        if exact:
            sql, names = _cached(self._counts, listing, listing.count)
        else:
            sql, names = _cached(self._capped_counts, listing, listing.capped_count)
        args = [params[name] for name in names]

        async def query(connection: asyncpg.Connection) -> Count:
            if exact:
                async with _planned(connection, where):
                    return Count(int(await connection.fetchval(sql, *args)), True)
            totals = summary_of(await connection.fetchrow(TOTALS))
            known = count_from_totals(where, totals)
            if known is not None:
                return Count(known, True)
            async with _planned(connection, where):
                capped = int(await connection.fetchval(sql, *args))
                if capped <= COUNT_CAP:
                    return Count(capped, True)
                sample, names = _cached(self._sampled_counts, listing, listing.sampled_count)
                values = params | {"percent": sample_percent(totals.items)}
                matches, sampled = await connection.fetchrow(sample, *[values[n] for n in names])
            return estimate(matches, sampled, totals.items)

        return await self._db.read_caught_up(query)

    async def summary(self) -> Summary:
        async def query(connection: asyncpg.Connection) -> Summary:
            return summary_of(await connection.fetchrow(TOTALS))

        return await self._db.read_caught_up(query)

    async def fold_totals(self) -> None:
        """The totals' rows folded into one (the primary; see items._totals)."""
        async with self._db.transaction() as connection:
            await connection.execute(FOLD)

    async def adjustments(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[AdjustmentRow] | None:
        async def query(connection: asyncpg.Connection) -> list[AdjustmentRow] | None:
            records = await connection.fetch(
                _ADJUSTMENTS, item_id, _NO_ID_ABOVE if before_id is None else before_id, limit
            )
            if not records and await connection.fetchval(_EXISTS, item_id) is None:
                return None
            return [AdjustmentRow(*record) for record in records]

        return await self._db.read_caught_up(query)

    async def history(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[tuple[int, float, int]] | None:
        async def query(connection: asyncpg.Connection) -> list[tuple[int, float, int]] | None:
            records = await connection.fetch(
                _HISTORY, item_id, _NO_ID_ABOVE if before_id is None else before_id, limit
            )
            if not records and await connection.fetchval(_EXISTS, item_id) is None:
                return None
            return [(record[0], record[1], record[2]) for record in records]

        return await self._db.read_caught_up(query)

    async def export_rows(self, listing: Listing, chunk: int) -> AsyncIterator[Sequence[ItemRow]]:
        # On a replica where one is caught up; if the standby cancels it part way (a conflict
        # with recovery) or goes away, the rest comes from the primary, after the last row
        # sent (the keyset, as a next page would).
        last: ItemRow | None = None
        async with self._db.replica_connection() as held:
            if held is not None:
                sql, args = self._list_statement(listing)
                try:
                    async with held.connection.transaction(isolation="repeatable_read"):
                        cursor = await held.connection.cursor(sql, *args)
                        while rows := await cursor.fetch(chunk):
                            page = [ItemRow(*record) for record in rows]
                            last = page[-1]
                            yield page
                    return
                except REPLICA_FAILURES as exc:
                    self._db.replica_failed(held, exc)
        if last is not None:
            listing = dataclasses.replace(listing, after=listing.keyset.cursor_payload(last))
        sql, args = self._list_statement(listing)
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.cursor(sql, *args)
            while rows := await cursor.fetch(chunk):
                yield [ItemRow(*record) for record in rows]

    def export_csv(self, listing: Listing) -> AsyncIterator[bytes] | None:
        # With replicas the export goes row by row (export_rows), which can go on from the
        # primary after the last row a failed replica sent; COPY's bytes cannot say where.
        if self._db.replicas is not None:
            return None
        return self._export_csv(listing)

    async def _export_csv(self, listing: Listing) -> AsyncIterator[bytes]:
        stmt = listing.select(_EXPORT_CELLS)
        compiled = stmt.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
        params = listing.params()
        args = [params[name] for name in compiled.positiontup or ()]
        # A small queue between COPY and the response: COPY waits while the client is slow.
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        async with self._db.connection() as connection:

            async def copy() -> None:
                try:
                    await connection.copy_from_query(
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
                    # The client left mid-export: COPY is cut off. The server may still be
                    # sending its rows, which would reach the connection's next user (asyncpg
                    # then fails it mid-answer): the connection is closed, not given back.
                    producer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producer
                    connection.terminate()

    def _list_statement(self, listing: Listing) -> tuple[str, list[Any]]:
        sql, names = _cached(self._lists, listing, lambda: listing.select())
        params = listing.params()
        return sql, [params[name] for name in names]

    # --- writes ---------------------------------------------------------------------------
    async def lock(self, connection: asyncpg.Connection, item_id: int) -> ItemRow | None:
        record = await connection.fetchrow(_LOCK, item_id)
        return None if record is None else ItemRow(*record)

    async def insert(
        self, connection: asyncpg.Connection, item: NewItem, reason: str
    ) -> tuple[ItemRow, AdjustmentRow | None]:
        try:
            record = await connection.fetchrow(_INSERT, *item, reason)
        except asyncpg.UniqueViolationError:
            raise _duplicate(item.sku) from None
        values = tuple(record)
        initial = values[_ITEM_WIDTH:]
        return ItemRow(*values[:_ITEM_WIDTH]), (
            None if initial[0] is None else AdjustmentRow(*initial)
        )

    async def update(
        self,
        connection: asyncpg.Connection,
        item_id: int,
        changes: dict[str, Any],
        now: dt.datetime,
    ) -> ItemRow:
        columns = tuple(changes)
        sql = self._updates.get(columns)
        if sql is None:
            sets = ", ".join(f"{name} = ${n}" for n, name in enumerate(columns, start=3))
            sql = (
                f"UPDATE items SET {sets}, version = version + 1, updated_at = $2 "
                f"WHERE id = $1 RETURNING {_COLUMNS}"
            )
            self._updates[columns] = sql
        try:
            record = await connection.fetchrow(sql, item_id, now, *changes.values())
        except asyncpg.UniqueViolationError:
            raise _duplicate(changes["sku"]) from None
        return ItemRow(*record)

    async def delete(self, connection: asyncpg.Connection, item_id: int) -> None:
        await connection.execute(_DELETE, item_id)

    async def add_stock(
        self,
        connection: asyncpg.Connection,
        item_id: int,
        delta: int,
        reason: str | None,
        now: dt.datetime,
    ) -> tuple[AdjustmentRow, ItemRow] | None:
        record = await connection.fetchrow(_ADD_STOCK, item_id, delta, reason, now)
        if record is None:
            return None
        values = tuple(record)
        return AdjustmentRow(*values[:_ADJ_WIDTH]), ItemRow(*values[_ADJ_WIDTH:])

    async def quantity_for_update(self, connection: asyncpg.Connection, item_id: int) -> int | None:
        quantity: int | None = await connection.fetchval(_QUANTITY_FOR_UPDATE, item_id)
        return quantity

    # --- imports --------------------------------------------------------------------------
    async def begin_import(self, connection: asyncpg.Connection) -> None:
        await connection.execute(_CREATE_SEEN_TABLE)
        await connection.execute(_CREATE_BATCH_TABLE)

    async def end_import(self, connection: asyncpg.Connection) -> None:
        await connection.execute(
            "DROP TABLE IF EXISTS stockroom_import_rows, stockroom_import_skus"
        )

    async def upsert_batch(
        self, connection: asyncpg.Connection, rows: Sequence[ValidRow], now: dt.datetime
    ) -> BatchCounts:
        await connection.execute("TRUNCATE stockroom_import_rows")
        await connection.copy_records_to_table(
            "stockroom_import_rows", columns=ValidRow._fields, records=rows
        )
        repeated = sorted(tuple(r) for r in await connection.fetch(_DUPLICATES))
        counts = BatchCounts(repeated=[(line, sku, first) for line, sku, first in repeated])
        expected = len(rows) - len(repeated)
        # A savepoint: another request may create one of these skus between the two
        # statements; then the batch is applied again from the start.
        for _attempt in range(_RETRIES_ON_RACE):
            async with connection.transaction():
                created = await connection.fetchval(_INSERT_BATCH, now, REASON_IMPORT)
                matched = changed = 0
                if created < expected:  # some exist
                    matched, changed = await connection.fetchrow(_UPDATE_BATCH, now, REASON_IMPORT)
                if matched + created == expected:
                    counts.created, counts.updated = created, changed
                    counts.unchanged = matched - changed
                    return counts
                # Another request deleted one of these items meanwhile: undo, try again.
                raise _RaceError
        raise RuntimeError("unreachable")  # pragma: no cover


class _RaceError(Exception):
    pass


_RETRIES_ON_RACE = 3


def _duplicate(sku: str) -> DuplicateError:
    return DuplicateError(f"An item with sku {sku!r} already exists.")


def _planned(connection: asyncpg.Connection, where: ItemFilter) -> Any:
    """Where the best plan depends on the values: a transaction that asks PostgreSQL to plan
    the statement for them (a prepared statement may otherwise keep one generic plan: a walk
    of the whole table for a `q` that matches nothing, say)."""
    if not where.plan_depends_on_values:
        return contextlib.nullcontext()
    return _custom_plans(connection)


@contextlib.asynccontextmanager
async def _custom_plans(connection: asyncpg.Connection) -> AsyncIterator[None]:
    async with connection.transaction():
        await connection.execute(CUSTOM_PLANS)
        yield


def _cached(
    cache: dict[Shape, tuple[str, tuple[str, ...]]], listing: Listing, build: Any
) -> tuple[str, tuple[str, ...]]:
    found = cache.get(listing.shape)
    if found is None:
        compiled = build().compile(dialect=_DIALECT)
        found = cache[listing.shape] = (compiled.string, tuple(compiled.positiontup or ()))
    return found


# --- the wire form in SQL, from the same field table as the API's JSON ------------------------

_ITEM_SQL = {
    "price": "to_char({r}.price_cents / 100.0, 'FM9999999990.00')",
    "created_at": UTC_TEXT.format(c="{r}.created_at"),
    "updated_at": UTC_TEXT.format(c="{r}.updated_at"),
}
_ADJUSTMENT_SQL = {"created_at": UTC_TEXT.format(c="{r}.created_at")}


def _json(fields: Sequence[str], special: dict[str, str], row: str) -> str:
    """``jsonb_build_object`` of the wire fields over the row alias ``row``; a field with
    no SQL of its own is the column of the same name."""
    parts = [f"'{name}', " + special.get(name, "{r}." + name).format(r=row) for name in fields]
    return f"jsonb_build_object({', '.join(parts)})"


def _item_json(row: str) -> str:
    return _json(ITEM_FIELDS, _ITEM_SQL, row)


def _adjustment_json(row: str) -> str:
    return _json(ADJUSTMENT_FIELDS, _ADJUSTMENT_SQL, row)


def _protected(column: str) -> Any:
    """SQL for a CSV cell as files.formats writes it: an apostrophe before formula starts."""
    apostrophe = "''''"  # a SQL string literal holding one apostrophe
    starts = f"'=', '+', '-', '@', E'\\t', E'\\r', {apostrophe}"
    return literal_column(
        f"CASE WHEN left({column}, 1) IN ({starts}) THEN {apostrophe} || {column} ELSE {column} END"
    )


_EXPORT_CELLS = [
    Item.id,
    _protected("items.sku").label("sku"),
    _protected("items.name").label("name"),
    _protected("items.description").label("description"),
    literal_column(_ITEM_SQL["price"].format(r="items")).label("price"),
    Item.quantity,
    Item.version,
    literal_column(_ITEM_SQL["created_at"].format(r="items")).label("created_at"),
    literal_column(_ITEM_SQL["updated_at"].format(r="items")).label("updated_at"),
    Item.reorder_point,
]


_CREATE_SEEN_TABLE = """
CREATE TEMPORARY TABLE stockroom_import_skus (sku varchar(64) PRIMARY KEY, line integer NOT NULL)"""
_CREATE_BATCH_TABLE = """
CREATE TEMPORARY TABLE stockroom_import_rows (
    line integer NOT NULL, sku varchar(64) NOT NULL, name varchar(200) NOT NULL,
    name_key text COLLATE "C" NOT NULL, description text, price_cents bigint NOT NULL,
    quantity integer, reorder_point integer, has_reorder_point boolean NOT NULL
)"""

# Every statement below reaches items and the sku table through their indexes, row by row
# (a LATERAL lookup, ON CONFLICT): the planner would otherwise hash-join a 5,000-row batch
# against a full scan of a million-row table, once per batch, and an import would slow down
# as the table grows.

_event_sql = PostgresEventStore.insert_select
_STOCK_EVENTS = _event_sql(
    STOCK_ADJUSTED, "SELECT l.* FROM ledger l ORDER BY l.id", _adjustment_json("e"), "e.created_at"
)
_CREATED_EVENTS = _event_sql(
    ITEM_CREATED, "SELECT c.* FROM created c ORDER BY c.id", _item_json("e"), "e.updated_at"
)
# A new item's starting stock: its event after the item's own, as POST /items writes them
# (the statement's data-modifying parts run in an order of the server's choosing: reading
# created_events' RETURNING first makes it finish before this one inserts a row).
_INITIAL_STOCK_EVENTS = _event_sql(
    STOCK_ADJUSTED,
    "SELECT l.* FROM ledger l WHERE (SELECT count(*) FROM created_events) >= 0 ORDER BY l.id",
    _adjustment_json("e"),
    "e.created_at",
)
_FIELDS_CHANGED = (
    "SELECT ch.* FROM changed ch JOIN current c ON c.id = ch.id "
    "WHERE (ch.name, ch.description, ch.price_cents, ch.reorder_point) IS DISTINCT FROM "
    "(c.old_name, c.old_description, c.old_price_cents, c.old_reorder_point) ORDER BY ch.id"
)
# Items the row took from above their reorder point (or none) to at or below it
# (items.common.crossed_low). Their events come after the batch's others: the statement's
# data-modifying parts run in an order of the server's choosing, so this one reads the
# others' RETURNING first (the counts are a dependency, never false), and they are done
# before it inserts a row.
_BECAME_LOW = (
    "SELECT ch.* FROM changed ch JOIN current c ON c.id = ch.id "
    "WHERE ch.quantity <= ch.reorder_point "
    "AND NOT coalesce(c.old_quantity <= c.old_reorder_point, false) "
    "AND (SELECT count(*) FROM updated_events) + (SELECT count(*) FROM stock_events) >= 0 "
    "ORDER BY ch.id"
)

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

_INSERT_BATCH = f"""
WITH created AS (
    INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at, reorder_point)
    SELECT r.sku, r.name, r.name_key, r.description, r.price_cents, coalesce(r.quantity, 0), 1,
           $1, $1, r.reorder_point
    FROM stockroom_import_rows r
    ORDER BY r.line
    ON CONFLICT (sku) DO NOTHING
    RETURNING *
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT id, quantity, $2, quantity, $1 FROM created WHERE quantity > 0 ORDER BY id
    RETURNING *
), created_events AS (
    {_CREATED_EVENTS} RETURNING 1
), stock_events AS (
    {_INITIAL_STOCK_EVENTS}
), done AS (
    DELETE FROM stockroom_import_rows r USING created c WHERE r.sku = c.sku
)
SELECT count(*) FROM created"""

_UPDATE_BATCH = f"""
WITH current AS (
    SELECT i.id, i.quantity AS old_quantity, i.name AS old_name,
           i.description AS old_description, i.price_cents AS old_price_cents,
           i.reorder_point AS old_reorder_point,
           r.name, r.name_key, r.description, r.price_cents, r.quantity,
           CASE WHEN r.has_reorder_point THEN r.reorder_point ELSE i.reorder_point END
               AS reorder_point
    FROM (SELECT * FROM stockroom_import_rows ORDER BY sku) r
    CROSS JOIN LATERAL (
        SELECT id, quantity, name, description, price_cents, reorder_point FROM items
        WHERE items.sku = r.sku FOR UPDATE
    ) i
), changed AS (
    UPDATE items i SET
        name = c.name, name_key = c.name_key, description = c.description,
        price_cents = c.price_cents, quantity = coalesce(c.quantity, i.quantity),
        reorder_point = c.reorder_point, version = i.version + 1, updated_at = $1
    FROM current c
    WHERE i.id = c.id AND (i.name, i.description, i.price_cents, i.quantity, i.reorder_point)
        IS DISTINCT FROM (c.name, c.description, c.price_cents, coalesce(c.quantity, i.quantity),
                          c.reorder_point)
    RETURNING i.*
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT ch.id, ch.quantity - c.old_quantity, $2, ch.quantity, $1
    FROM changed ch JOIN current c ON c.id = ch.id
    WHERE ch.quantity <> c.old_quantity
    ORDER BY ch.id
    RETURNING *
), updated_events AS (
    {_event_sql(ITEM_UPDATED, _FIELDS_CHANGED, _item_json("e"), "e.updated_at")} RETURNING 1
), stock_events AS (
    {_STOCK_EVENTS} RETURNING 1
), low_events AS (
    {_event_sql(STOCK_LOW, _BECAME_LOW, _item_json("e"), "e.updated_at")}
)
SELECT (SELECT count(*) FROM current), (SELECT count(*) FROM changed)"""
