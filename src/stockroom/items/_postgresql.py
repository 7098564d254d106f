"""Items on PostgreSQL: asyncpg directly, with the SQL text of every statement made once.

asyncpg prepares a statement on first use on a connection and keeps it, so a request sends
only its parameters (not through PgBouncer, see ``database/_postgresql/_pgbouncer.py``). The list's
statements depend on which filters are present: each shape is compiled from
``items.repository`` once, on first use, and kept.

Imports: each batch is COPied into a temporary table, with most of its events' bodies made
ahead by the same code as the API's (``prepare_batch``, in a worker thread), then a few
set-based statements upsert it, write the ledger rows and the events (the database puts in
only the ids it assigns).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

import asyncpg
import structlog
from sqlalchemy import literal_column
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from stockroom.database._postgresql import PostgresDatabase
from stockroom.database._postgresql._replicas import REPLICA_FAILURES
from stockroom.database.consistency import REPLAYED
from stockroom.errors import DuplicateError
from stockroom.events._postgresql import UTC_TEXT, PostgresEventStore
from stockroom.events.log import event_body_parts, event_ids, event_row
from stockroom.items._totals import (
    CUSTOM_PLANS,
    CUSTOM_SERIAL_PLANS,
    FOLD,
    TOTALS,
    estimate,
    matches_in_totals,
    sample_percent,
    summary_of,
    totals_answer,
)
from stockroom.items.common import crossed_low
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
from stockroom.items.schemas import (
    ADJUSTMENT_FIELDS,
    ITEM_FIELDS,
    MAX_QUANTITY,
    adjustment_json,
    item_json,
)
from stockroom.items.store import BatchCounts, ImportBatch, NewItem, ValidRow

__all__ = ["PostgresItemStore"]

log = structlog.get_logger("stockroom.files")
T = TypeVar("T")

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
    def __init__(
        self, database: PostgresDatabase, events: PostgresEventStore, *, export_stall: float
    ) -> None:
        self._db = database
        self._events = events
        self._export_stall = export_stall
        self._lists: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._capped_counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._sampled_counts: dict[Shape, tuple[str, tuple[str, ...]]] = {}
        self._exports: dict[Shape, tuple[str, tuple[str, ...]]] = {}
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
                async with _planned(connection, where, parallel=True):
                    return Count(int(await connection.fetchval(sql, *args)), True)
            if totals_answer(where):
                totals = summary_of(await connection.fetchrow(TOTALS))
                return Count(matches_in_totals(where, totals), True)
            async with _planned(connection, where):
                capped = int(await connection.fetchval(sql, *args))
                if capped <= COUNT_CAP:
                    return Count(capped, True)
                # Only now the table's size (the sample's share and scale).
                totals = summary_of(await connection.fetchrow(TOTALS))
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

    def export_rows(self, listing: Listing, chunk: int) -> AsyncIterator[Sequence[ItemRow]]:
        # The cursor is read in a task of its own, which holds the connection: a client that
        # stops reading frees it after the stall timeout (_handed_over).
        return _handed_over(partial(_pump, self._rows(listing, chunk)), self._export_stall)

    async def _rows(self, listing: Listing, chunk: int) -> AsyncGenerator[Sequence[ItemRow], None]:
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

    def _export_csv(self, listing: Listing) -> AsyncIterator[bytes]:
        sql, names = _cached(self._exports, listing, lambda: listing.select(_EXPORT_CELLS))
        params = listing.params()
        args = [params[name] for name in names]
        # COPY runs in a task of its own, which holds the connection (_handed_over).
        return _handed_over(partial(self._copy_out, sql, args), self._export_stall)

    async def _copy_out(self, sql: str, args: list[Any], chunks: _Handoff[bytes]) -> None:
        # COPY lasts as long as the client reads, so the statement timeout does not bound it
        # (an export that kept PostgreSQL busy longer was cut off, a 200 cut short).
        async with self._db.connection() as connection:
            try:
                await connection.execute(_EXPORT_BEGIN)
                await connection.copy_from_query(
                    sql,
                    *args,
                    output=lambda data: chunks.put(bytes(data)),  # asyncpg gives bytearrays
                    format="csv",
                    header=True,
                    timeout=_NO_CLIENT_TIMEOUT,
                )
                await connection.execute("COMMIT")
            except BaseException:
                # Cut off (the client left or stopped reading) or failed. The server may
                # still be sending rows, which would reach the connection's next user
                # (asyncpg then fails it mid-answer): closed, not given back.
                connection.terminate()
                raise

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

    def prepare_batch(self, rows: Sequence[ValidRow], now: dt.datetime) -> ImportBatch:
        return ImportBatch(rows, now, batch_records(rows, now))

    async def upsert_batch(self, connection: asyncpg.Connection, batch: ImportBatch) -> BatchCounts:
        rows, now = batch.rows, batch.now
        await connection.execute("TRUNCATE stockroom_import_rows")
        await connection.copy_records_to_table(
            "stockroom_import_rows", columns=_BATCH_COLUMNS, records=batch.prepared
        )
        repeated = sorted(tuple(r) for r in await connection.fetch(_DUPLICATES))
        counts = BatchCounts(repeated=[(line, sku, first) for line, sku, first in repeated])
        expected = len(rows) - len(repeated)
        # A savepoint: another request may create one of these skus between the two
        # statements; then the batch is applied again from the start.
        for _attempt in range(_RETRIES_ON_RACE):
            async with connection.transaction():
                created = await connection.fetchval(
                    _INSERT_BATCH, *insert_batch_args(now, expected)
                )
                matched = changed = 0
                if created < expected:  # some exist
                    matched, changed = await self._update_batch(connection, now)
                if matched + created == expected:
                    counts.created, counts.updated = created, changed
                    counts.unchanged = matched - changed
                    return counts
                # Another request deleted one of these items meanwhile: undo, try again.
                raise _RaceError
        raise RuntimeError("unreachable")  # pragma: no cover

    async def _update_batch(
        self, connection: asyncpg.Connection, now: dt.datetime
    ) -> tuple[int, int]:
        """Update the items of the batch's rows that exist, and write their ledger rows and
        events (as items.writer and the SQLite store do); how many rows found their item,
        and how many of those changed it."""
        records = await connection.fetch(_UPDATE_BATCH, now, REASON_IMPORT)
        matched, changed = records[0][0], 0
        updated: list[dict[str, Any]] = []
        stock: list[AdjustmentRow] = []
        low: list[dict[str, Any]] = []  # after the others, as the API writes them
        for record in records:
            if record[1] is None:  # no item changed: the one row of the counts
                continue
            changed += 1
            item = ItemRow(*record[1 : 1 + _ITEM_WIDTH])
            old = _Before(*record[1 + _ITEM_WIDTH :])
            payload = item_json(item).decode()
            if (item.name, item.description, item.price_cents, item.reorder_point) != (
                old.name, old.description, old.price_cents, old.reorder_point,
            ):  # fmt: skip
                updated.append(event_row(ITEM_UPDATED, payload, now))
            if old.ledger_id is not None:
                delta = item.quantity - old.quantity
                stock.append(
                    AdjustmentRow(old.ledger_id, item.id, delta, REASON_IMPORT, item.quantity, now)
                )
            before = item._replace(quantity=old.quantity, reorder_point=old.reorder_point)
            if crossed_low(before, item):
                low.append(event_row(STOCK_LOW, payload, now))
        stock.sort()  # in the ledger's order
        stock_events = [event_row(STOCK_ADJUSTED, adjustment_json(a).decode(), now) for a in stock]
        await self._events.append(connection, updated + stock_events + low)
        return matched, changed


class _RaceError(Exception):
    pass


_RETRIES_ON_RACE = 3


def _duplicate(sku: str) -> DuplicateError:
    return DuplicateError(f"An item with sku {sku!r} already exists.")


@contextlib.asynccontextmanager
async def _planned(
    connection: asyncpg.Connection, where: ItemFilter, *, parallel: bool = False
) -> AsyncIterator[None]:
    """Where the best plan depends on the values: a transaction that asks PostgreSQL to plan
    the statement for them (a prepared statement may otherwise keep one generic plan: a walk
    of the whole table for a `q` that matches nothing, say), without parallel workers unless
    ``parallel`` (items._totals.CUSTOM_SERIAL_PLANS says why)."""
    if not where.plan_depends_on_values:
        yield
        return
    async with connection.transaction():
        await connection.execute(CUSTOM_PLANS if parallel else CUSTOM_SERIAL_PLANS)
        yield


def _cached(
    cache: dict[Shape, tuple[str, tuple[str, ...]]], listing: Listing, build: Any
) -> tuple[str, tuple[str, ...]]:
    found = cache.get(listing.shape)
    if found is None:
        compiled = build().compile(dialect=_DIALECT)
        found = cache[listing.shape] = (compiled.string, tuple(compiled.positiontup or ()))
    return found


# --- the export -------------------------------------------------------------------------

# The export's transaction: no statement timeout (COPY runs as long as the client reads) and
# no JIT (the connection's default too; here for PgBouncer, which takes no startup setting).
_EXPORT_BEGIN = "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL jit = off"
# asyncpg bounds a whole COPY by one timeout (the pool's command timeout by default).
_NO_CLIENT_TIMEOUT = 10.0 * 365 * 24 * 3600
_EXPORT_CHUNKS_WAITING = 8


class _ClientStalledError(Exception):
    """The export's client read nothing for the stall timeout."""


class _Handoff(Generic[T]):
    """What an export's producer task makes, on its way to the response: at most a few
    items waiting (the producer waits while the client is slow, up to ``stall`` seconds: a
    client that reads nothing for that long fails the export), and an end that always gets
    through."""

    def __init__(self, stall: float) -> None:
        self._stall = stall
        self._queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(_EXPORT_CHUNKS_WAITING)

    async def put(self, item: T) -> None:
        if self._room.locked():
            try:
                await asyncio.wait_for(self._room.acquire(), self._stall)
            except TimeoutError:
                raise _ClientStalledError from None
        else:
            await self._room.acquire()
        self._queue.put_nowait((item,))

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def get(self) -> tuple[T] | None:
        got = await self._queue.get()
        self._room.release()
        return got


async def _handed_over(
    produce: Callable[[_Handoff[T]], Awaitable[None]], stall: float
) -> AsyncIterator[T]:
    """What ``produce`` puts, made in a task of its own that holds the database connection:
    a client that stops reading (the response waits in its send) frees the connection after
    ``stall`` seconds, not when it finally leaves. A failure of the producer fails the
    response (cut short, never ended as if whole); a client that leaves cancels it."""
    handoff: _Handoff[T] = _Handoff(stall)

    async def run() -> None:
        try:
            await produce(handoff)
        except _ClientStalledError:
            log.warning("export ended: its client read nothing", seconds=stall)
            raise
        finally:
            handoff.end()

    producer = asyncio.create_task(run())
    try:
        while (got := await handoff.get()) is not None:
            yield got[0]
        await producer
    finally:
        if not producer.done():  # the client left mid-export
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


async def _pump(source: AsyncGenerator[T, None], handoff: _Handoff[T]) -> None:
    """Every item of ``source`` into ``handoff``; ``source`` closed (its connection given
    back) however it ends."""
    try:
        async for item in source:
            await handoff.put(item)
    finally:
        await source.aclose()


# --- the export's CSV cells in SQL, as the API writes the values ----------------------------

_ITEM_SQL = {
    # Whole units, then two places: half the time of to_char(..., 'FM9999999990.00').
    "price": "({r}.price_cents / 100)::text || CASE WHEN {r}.price_cents % 100 < 10 "
    "THEN '.0' ELSE '.' END || ({r}.price_cents % 100)::text",
    "created_at": UTC_TEXT.format(c="{r}.created_at"),
    "updated_at": UTC_TEXT.format(c="{r}.updated_at"),
}


def _protected(column: str) -> Any:
    """SQL for a CSV cell as files.formats writes it: an apostrophe before formula starts."""
    apostrophe = "''''"  # a SQL string literal holding one apostrophe
    # The first character's code (=, +, -, @, tab, carriage return, apostrophe): a third of
    # the time of `left(column, 1) IN ('=', ...)` over 1,000,000 names.
    starts = ", ".join(str(ord(c)) for c in "=+-@\t\r'")
    return literal_column(
        f"CASE WHEN ascii({column}) IN ({starts}) THEN {apostrophe} || {column} ELSE {column} END"
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
    quantity integer, reorder_point integer, has_reorder_point boolean NOT NULL,
    created_event text NOT NULL, created_tail text NOT NULL, stock_event text, stock_tail text
)"""
_BATCH_COLUMNS = (*ValidRow._fields, "created_event", "created_tail", "stock_event", "stock_tail")

# Every statement below reaches items and the sku table through their indexes, row by row
# (a LATERAL lookup, ON CONFLICT): the planner would otherwise hash-join a 5,000-row batch
# against a full scan of a million-row table, once per batch, and an import would slow down
# as the table grows.

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

# The batch's events: each body is put together from its parts (events.log.event_body_parts;
# $3-$6 of _INSERT_BATCH, the same for the whole batch), the ids that only the database knows
# and the rest of its data, made ahead by prepare_batch (the batch table's created_tail and
# stock_tail). item_json of an item and adjustment_json of a ledger row start with their ids.
_DATA_HEAD = '{"id":'
_ITEM_HEAD = b'{"id":0'
_LEDGER_HEAD = b'{"id":0,"item_id":0'
_ITEM_ID = ',"item_id":'
if ITEM_FIELDS[:1] != ("id",) or ADJUSTMENT_FIELDS[:2] != ("id", "item_id"):
    raise RuntimeError("the import's events expect the ids first")  # pragma: no cover


def _after_ids(data: bytes) -> str:
    """The JSON of an item or a ledger row made with its ids 0, after them."""
    head = _LEDGER_HEAD if data.startswith(_LEDGER_HEAD) else _ITEM_HEAD
    return data[len(head) :].decode()


def batch_records(rows: Sequence[ValidRow], now: dt.datetime) -> list[tuple[Any, ...]]:
    """The rows of the batch table: each row with the ids and bodies of the events it
    writes if it creates its item, but for what only the database knows (the item's id,
    its ledger row's id: :data:`_INSERT_BATCH` puts them in). Made by the same code as the
    API's events (``item_json``, ``adjustment_json``, ``event_row``'s body and ids), here
    rather than in SQL: the database has the most work of an import, and this runs in a
    worker thread beside it."""
    created_end = event_body_parts(ITEM_CREATED, now)[2]
    stock_end = event_body_parts(STOCK_ADJUSTED, now)[2]
    stock_tails: dict[int, str] = {}  # by quantity: the same for every item of one
    records = []
    ids = event_ids(2 * len(rows))
    for n, row in enumerate(rows):
        quantity = row.quantity or 0
        item = ItemRow(
            0, row.sku, row.name, row.name_key, row.description, row.price_cents,
            quantity, 1, now, now, row.reorder_point,
        )  # fmt: skip
        stock_tail = None
        if quantity > 0:
            stock_tail = stock_tails.get(quantity)
            if stock_tail is None:
                ledger = AdjustmentRow(0, 0, quantity, REASON_IMPORT, quantity, now)
                stock_tail = stock_tails[quantity] = _after_ids(adjustment_json(ledger)) + stock_end
        records.append(
            (
                *row,
                ids[2 * n],
                _after_ids(item_json(item)) + created_end,
                None if stock_tail is None else ids[2 * n + 1],
                stock_tail,
            )
        )
    return records


def insert_batch_args(now: dt.datetime, rows: int) -> tuple[Any, ...]:
    """The parameters of :data:`_INSERT_BATCH` for a batch of ``rows`` made at ``now``."""
    created = event_body_parts(ITEM_CREATED, now)
    stock = event_body_parts(STOCK_ADJUSTED, now)
    return (
        now,
        REASON_IMPORT,
        created[0],
        created[1] + _DATA_HEAD,
        stock[0],
        stock[1] + _DATA_HEAD,
        rows,
    )


# Each row takes its item's id from the sequence before the insert (as the column's default
# would, in file order), and its ledger row's id if it has stock: the events are made from
# the batch's own rows, with no join on what the inserts return. A row whose sku turns out
# to exist uses its ids up (as the column's default does). `made`: the rows that created
# their item (all of them, unless some sku existed: $7 is the batch's size). The rows the
# insert did not take stay in the batch table for _UPDATE_BATCH; only then are the others
# deleted from it.
_INSERT_BATCH = f"""
WITH batch AS (
    SELECT nextval('items_id_seq') AS id,
           CASE WHEN r.quantity > 0 THEN nextval('adjustments_id_seq') END AS ledger_id, r.*
    FROM (SELECT * FROM stockroom_import_rows ORDER BY line) r
), created AS (
    INSERT INTO items (id, sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at, reorder_point)
    SELECT b.id, b.sku, b.name, b.name_key, b.description, b.price_cents,
           coalesce(b.quantity, 0), 1, $1, $1, b.reorder_point
    FROM batch b
    ORDER BY b.id
    ON CONFLICT (sku) DO NOTHING
    RETURNING id, sku
), made AS (
    SELECT b.id, b.ledger_id, b.quantity, b.created_event, b.created_tail, b.stock_event,
           b.stock_tail
    FROM batch b
    WHERE (SELECT count(*) FROM created) = $7 OR b.id IN (SELECT id FROM created)
), ledger AS (
    INSERT INTO adjustments (id, item_id, delta, reason, quantity_after, created_at)
    SELECT m.ledger_id, m.id, m.quantity, $2, m.quantity, $1
    FROM made m WHERE m.ledger_id IS NOT NULL ORDER BY m.ledger_id
), created_events AS (
    INSERT INTO events (id, type, body, created_at)
    SELECT m.created_event, '{ITEM_CREATED}',
           $3::text || m.created_event || $4::text || m.id || m.created_tail, $1
    FROM made m ORDER BY m.id
    RETURNING 1
), stock_events AS (
    -- A new item's starting stock: its event after the item's own, as POST /items writes
    -- them (the statement's data-modifying parts run in an order of the server's choosing:
    -- reading created_events' RETURNING first makes it finish before this one inserts a row).
    INSERT INTO events (id, type, body, created_at)
    SELECT m.stock_event, '{STOCK_ADJUSTED}',
           $5::text || m.stock_event || $6::text || m.ledger_id || '{_ITEM_ID}' || m.id
               || m.stock_tail,
           $1
    FROM made m
    WHERE m.ledger_id IS NOT NULL AND (SELECT count(*) FROM created_events) >= 0
    ORDER BY m.ledger_id
), done AS (
    DELETE FROM stockroom_import_rows r USING created c
    WHERE r.sku = c.sku AND (SELECT count(*) FROM created) < $7
)
SELECT count(*) FROM created"""

# The items changed, each with what it was before and its ledger row's id (if its quantity
# changed); or, if none changed, one row of NULLs. The first column: how many rows found
# their item. The events are made from these rows (_update_batch).
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
    RETURNING id, item_id
)
SELECT m.matched, {", ".join("ch." + c for c in ITEM_COLUMNS)},
       c.old_name, c.old_description, c.old_price_cents, c.old_quantity, c.old_reorder_point,
       l.id
FROM (SELECT count(*) AS matched FROM current) m
LEFT JOIN (changed ch JOIN current c ON c.id = ch.id LEFT JOIN ledger l ON l.item_id = ch.id)
    ON true
ORDER BY ch.id"""


class _Before(NamedTuple):
    """An updated item's fields before the batch, and its ledger row's id (None: its
    quantity did not change)."""

    name: str
    description: str | None
    price_cents: int
    quantity: int
    reorder_point: int | None
    ledger_id: int | None
