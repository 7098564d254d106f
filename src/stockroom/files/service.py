"""Streaming import and export of items.

Import: the body arrives in chunks; each chunk is parsed and validated in a worker thread
(so the event loop keeps answering other requests), and rows are upserted by sku in batches.
Memory is bounded by a chunk and a batch, however large the file: even the check for a sku
that appears twice in one file is done by the database, in a temporary table.

Export: rows come from a server-side cursor (``yield_per``) and leave as soon as they are
formatted; a client that goes away cancels the stream, which closes the cursor and returns
the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stockroom.db import is_unique_violation, utcnow, write_connection
from stockroom.errors import InvalidRequestError
from stockroom.files.formats import (
    CsvReader,
    FileError,
    NdjsonReader,
    RecordError,
    csv_header,
    csv_rows,
    ndjson_rows,
)
from stockroom.files.schemas import ImportReport, ImportRow
from stockroom.items.models import Item, fold_name
from stockroom.items.repository import ItemFilter, ItemRepository, Keyset
from stockroom.ledger.models import Adjustment

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "BodyHasher",
    "ImportOptions",
    "ImportRejectedError",
    "Reader",
    "export_chunks",
    "import_items",
]

BATCH_ROWS = 1_000
# PostgreSQL takes a batch with COPY and a few set-based statements: bigger is cheaper.
BATCH_ROWS_POSTGRESQL = 5_000
EXPORT_ROWS_PER_CHUNK = 1_000
REASON_IMPORT = "import"
# Export columns that an import accepts and ignores (the database assigns them).
_IGNORED_COLUMNS = ("id", "version", "created_at", "updated_at")
_RETRIES_ON_RACE = 3

Reader = CsvReader | NdjsonReader
IMPORT_FORMATS: dict[str, type[Reader]] = {
    "text/csv": CsvReader,
    "application/x-ndjson": NdjsonReader,
    "application/ndjson": NdjsonReader,
}
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}

# Skus seen so far in this import, kept by the database instead of in memory.
_seen = Table(
    "stockroom_import_skus",
    MetaData(),
    Column("sku", String(64), primary_key=True),
    Column("line", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


class _RaceError(Exception):
    """A sku of the batch appeared (another request) while the batch was being applied."""


class ImportRejectedError(InvalidRequestError):
    """An atomic import (or a file that cannot be read) applied nothing."""

    slug, title = "import-rejected", "Import rejected"

    def __init__(self, detail: str, report: ImportReport) -> None:
        super().__init__(detail)
        self.report = report
        self.errors = [
            {
                "loc": ["body", "line", e.line],
                "msg": e.message,
                "line": e.line,
                "message": e.message,
            }
            for e in report.errors
        ]
        self.extra = report.model_dump(exclude={"errors"})


@dataclass
class ImportOptions:
    atomic: bool = False
    # Called inside the one transaction of the import, with its report, before it commits
    # (idempotency keys use it to store the answer with the effect). Setting it makes the
    # whole import one transaction, as atomic does, but bad rows are skipped, not fatal.
    before_commit: Callable[[AsyncSession, ImportReport], Awaitable[None]] | None = None
    # Called first inside that one transaction (idempotency keys take their lock there).
    on_begin: Callable[[AsyncSession], Awaitable[None]] | None = None
    # Called with the number of rows read so far (progress bars).
    progress: Callable[[int], None] | None = None

    @property
    def one_transaction(self) -> bool:
        return self.atomic or self.before_commit is not None or self.on_begin is not None


@dataclass
class _Parsed:
    rows: list[tuple[int, ImportRow]] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


def _parse(reader: Reader, chunk: bytes, final: bool) -> _Parsed:
    """Decode, split and validate one chunk. Runs in a worker thread."""
    records, errors = reader.feed(chunk, final)
    parsed = _Parsed(errors=errors)
    is_csv = isinstance(reader, CsvReader)
    for record in records:
        fields = {k: v for k, v in record.fields.items() if k not in _IGNORED_COLUMNS}
        if is_csv:
            fields = _from_csv(fields)
        try:
            parsed.rows.append((record.line, ImportRow.model_validate(fields)))
        except ValidationError as exc:
            parsed.errors.append(RecordError(record.line, _first_problem(exc)))
    if final or reader.broken:
        reader.finish()
    parsed.errors.sort(key=lambda error: error.line)
    return parsed


def _from_csv(fields: dict[str, Any]) -> dict[str, Any]:
    """CSV has only text: an empty description is null, an empty quantity is absent."""
    if fields.get("description") == "":
        fields["description"] = None
    quantity = fields.pop("quantity", "")
    if quantity != "":
        fields["quantity"] = (
            int(quantity) if quantity.isdigit() and quantity.isascii() else quantity
        )
    return fields


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "row"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


async def import_items(
    engine: AsyncEngine,
    chunks: AsyncIterator[bytes],
    reader: Reader,
    options: ImportOptions,
) -> ImportReport:
    """Read the whole stream and upsert its rows; returns the report.

    Raises :class:`ImportRejectedError` when nothing may be applied: an unreadable header,
    or any bad row in atomic mode.
    """
    report = ImportReport()
    async with write_connection(engine) as connection:
        session = AsyncSession(bind=connection, expire_on_commit=False, autoflush=False)
        try:
            if options.on_begin is not None:
                await options.on_begin(session)
            await session.run_sync(lambda s: _seen.create(s.connection()))
            if _on_postgresql(session):
                await session.execute(text(_CREATE_BATCH_TABLE))
            if not options.one_transaction:
                await session.commit()
            await _run(session, chunks, reader, options, report)
            if options.atomic and report.failed:
                await session.rollback()
                raise ImportRejectedError(
                    f"{report.failed} bad row(s); nothing was imported (mode=atomic).",
                    ImportReport(failed=report.failed, errors=report.errors),
                )
            if options.before_commit is not None:
                await options.before_commit(session, report)
            await session.commit()
        finally:
            # Leave the pooled connection as we found it; if it broke, it is discarded.
            with contextlib.suppress(Exception):
                await session.rollback()
                await session.run_sync(lambda s: _seen.drop(s.connection(), checkfirst=True))
                await session.execute(text("DROP TABLE IF EXISTS stockroom_import_rows"))
                await session.commit()
            await session.close()
    return report


async def _parsed_chunks(
    chunks: AsyncIterator[bytes], reader: Reader, queue: asyncio.Queue[_Parsed | None]
) -> None:
    """Read and parse ahead (in a worker thread) while the previous batch is written; the
    small queue keeps memory bounded. Ends with None."""
    try:
        final = False
        iterator = aiter(chunks)
        while not final:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                chunk, final = b"", True
            parsed = await asyncio.to_thread(_parse, reader, chunk, final)
            await queue.put(parsed)
            if reader.broken:
                break
    finally:
        await queue.put(None)


async def _run(
    session: AsyncSession,
    chunks: AsyncIterator[bytes],
    reader: Reader,
    options: ImportOptions,
    report: ImportReport,
) -> None:
    batch_rows = BATCH_ROWS_POSTGRESQL if _on_postgresql(session) else BATCH_ROWS
    batch: list[tuple[int, ImportRow]] = []
    rows_read = 0
    apply = True

    async def flush(rows: list[tuple[int, ImportRow]]) -> None:
        nonlocal apply
        apply = await _apply_batch(session, rows, report, apply=apply)
        if options.atomic and report.failed:
            apply = False  # keep reading to report every bad row, but write nothing more
        if not options.one_transaction:
            await session.commit()

    queue: asyncio.Queue[_Parsed | None] = asyncio.Queue(maxsize=2)
    producer = asyncio.create_task(_parsed_chunks(chunks, reader, queue))
    try:
        while (parsed := await queue.get()) is not None:
            for error in parsed.errors:
                report.fail(error.line, error.message)
            batch.extend(parsed.rows)
            rows_read += len(parsed.rows) + len(parsed.errors)
            if options.progress is not None:
                options.progress(rows_read)
            if options.atomic and report.failed:
                apply = False
            # Whole batches of one size: the same SQL every time, so prepared statements
            # are reused.
            while len(batch) >= batch_rows:
                await flush(batch[:batch_rows])
                del batch[:batch_rows]
        await producer  # raises what the reading or parsing raised
    except FileError as exc:
        report.fail(exc.line, exc.message)
        if isinstance(reader, CsvReader) and reader.columns is None:
            raise ImportRejectedError(exc.message, report) from None
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
    if batch:
        await flush(batch)


def _on_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _apply_batch(
    session: AsyncSession, rows: list[tuple[int, ImportRow]], report: ImportReport, *, apply: bool
) -> bool:
    """Upsert one batch by sku; returns whether to go on applying."""
    on_postgresql = _on_postgresql(session)
    if on_postgresql:
        unique = await _first_time_seen_postgresql(session, rows, report)
    else:
        unique = await _first_time_seen(session, rows, report)
    if not apply or not unique:
        return apply
    upsert = _upsert_postgresql if on_postgresql else _upsert
    for attempt in range(_RETRIES_ON_RACE):
        counts = _Counts()
        try:
            async with session.begin_nested():
                await upsert(session, unique, counts)
        except (IntegrityError, _RaceError) as exc:
            # Another request created one of these skus after we looked: look again.
            unique_violation = isinstance(exc, _RaceError) or is_unique_violation(exc)
            if not unique_violation or attempt == _RETRIES_ON_RACE - 1:
                raise
            continue
        report.created += counts.created
        report.updated += counts.updated
        report.unchanged += counts.unchanged
        return True
    return True


async def _first_time_seen(
    session: AsyncSession, rows: list[tuple[int, ImportRow]], report: ImportReport
) -> list[tuple[int, ImportRow]]:
    """Drop (and report) rows whose sku came earlier in the file."""
    skus = {row.sku for _, row in rows}
    found = await session.execute(select(_seen.c.sku, _seen.c.line).where(_seen.c.sku.in_(skus)))
    first: dict[str, int] = dict(found.all())  # from earlier batches
    unique: list[tuple[int, ImportRow]] = []
    for line, row in rows:
        if row.sku in first:
            report.fail(line, f"sku {row.sku!r} appears again (first on line {first[row.sku]})")
        else:
            first[row.sku] = line
            unique.append((line, row))
    if unique:
        await session.execute(insert(_seen), [{"sku": r.sku, "line": n} for n, r in unique])
    return unique


# --- PostgreSQL: COPY each batch into a temporary table, then a few set-based statements --

_CREATE_BATCH_TABLE = """
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

# Existing items: lock them (in id order, so concurrent imports cannot deadlock), update
# what differs, and write an `import` adjustment where the quantity changes.
_UPDATE = """
WITH current AS (
    SELECT i.id, i.quantity AS old_quantity, r.*
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
    RETURNING i.id, i.quantity
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT ch.id, ch.quantity - c.old_quantity, :reason, ch.quantity, :now
    FROM changed ch JOIN current c ON c.id = ch.id
    WHERE ch.quantity <> c.old_quantity
    ORDER BY ch.id
)
SELECT (SELECT count(*) FROM current), (SELECT count(*) FROM changed)"""

# New items, in file order, with an `import` adjustment for their starting stock.
_INSERT = """
WITH created AS (
    INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                       created_at, updated_at)
    SELECT r.sku, r.name, r.name_key, r.description, r.price_cents, coalesce(r.quantity, 0), 1,
           :now, :now
    FROM stockroom_import_rows r
    WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.sku = r.sku)
    ORDER BY r.line
    RETURNING id, quantity
), ledger AS (
    INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
    SELECT id, quantity, :reason, quantity, :now FROM created WHERE quantity > 0 ORDER BY id
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
            (line, r.sku, r.name, fold_name(r.name), r.description, int(r.price * 100), r.quantity)
            for line, r in rows
        ],
    )


async def _first_time_seen_postgresql(
    session: AsyncSession, rows: list[tuple[int, ImportRow]], report: ImportReport
) -> list[tuple[int, ImportRow]]:
    await _copy_batch(session, rows)
    dropped = (await session.execute(text(_DUPLICATES))).all()
    for line, sku, first_line in dropped:
        report.fail(line, f"sku {sku!r} appears again (first on line {first_line})")
    gone = {line for line, _, _ in dropped}
    return [(line, row) for line, row in rows if line not in gone]


async def _upsert_postgresql(
    session: AsyncSession, rows: Sequence[tuple[int, ImportRow]], counts: _Counts
) -> None:
    """The batch is already in stockroom_import_rows (see _first_time_seen_postgresql)."""
    params = {"now": utcnow(), "reason": REASON_IMPORT}
    matched, changed = (await session.execute(text(_UPDATE), params)).one()
    created = (await session.execute(text(_INSERT), params)).scalar_one()
    if matched + created != len(rows):
        # Another request created one of these skus between the two statements.
        raise _RaceError
    counts.created += created
    counts.updated += changed
    counts.unchanged += matched - changed


@dataclass
class _Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


async def _upsert(
    session: AsyncSession, rows: Sequence[tuple[int, ImportRow]], counts: _Counts
) -> None:
    now = utcnow()
    skus = [row.sku for _, row in rows]
    # FOR UPDATE (PostgreSQL): nobody changes these items until the batch commits, so the
    # quantity each adjustment starts from is the real one.
    existing = {
        item.sku: item
        for item in (
            await session.execute(
                select(
                    Item.id, Item.sku, Item.name, Item.description,
                    Item.price_cents, Item.quantity, Item.version,
                )
                .where(Item.sku.in_(skus))
                .with_for_update()
            )
        ).all()
    }  # fmt: skip
    new = [row for _, row in rows if row.sku not in existing]
    adjustments: list[dict[str, Any]] = []
    if new:
        created = await session.execute(
            insert(Item).returning(Item.id, Item.sku),
            [
                {
                    "sku": row.sku,
                    "name": row.name,
                    "name_key": fold_name(row.name),
                    "description": row.description,
                    "price_cents": int(row.price * 100),
                    "quantity": row.quantity or 0,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for row in new
            ],
        )
        ids = {sku: item_id for item_id, sku in created.all()}
        adjustments += [
            _adjustment(ids[row.sku], row.quantity, row.quantity, now)
            for row in new
            if row.quantity
        ]
        counts.created += len(new)
    changes: list[dict[str, Any]] = []
    for _, row in rows:
        current = existing.get(row.sku)
        if current is None:
            continue
        change = _changes(current, row)
        if not change:
            counts.unchanged += 1
            continue
        if "quantity" in change:
            delta = change["quantity"] - current.quantity
            adjustments.append(_adjustment(current.id, delta, change["quantity"], now))
        changes.append(
            {"id": current.id, **change, "version": current.version + 1, "updated_at": now}
        )
        counts.updated += 1
    if changes:
        await session.execute(update(Item), changes)
    if adjustments:
        await session.execute(insert(Adjustment), adjustments)


def _changes(current: Any, row: ImportRow) -> dict[str, Any]:
    change: dict[str, Any] = {}
    if row.name != current.name:
        change["name"] = row.name
        change["name_key"] = fold_name(row.name)
    if row.description != current.description:
        change["description"] = row.description
    price_cents = int(row.price * 100)
    if price_cents != current.price_cents:
        change["price_cents"] = price_cents
    if row.quantity is not None and row.quantity != current.quantity:
        change["quantity"] = row.quantity
    return change


def _adjustment(item_id: int, delta: int, quantity_after: int, now: dt.datetime) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "delta": delta,
        "reason": REASON_IMPORT,
        "quantity_after": quantity_after,
        "created_at": now,
    }


class BodyHasher:
    """Hashes the raw body as it streams by (idempotency of imports)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._hash = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# --- export ----------------------------------------------------------------------------


def _utc(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _format(rows: Sequence[Any], fmt: str) -> bytes:
    values = [
        (
            r.id, r.sku, r.name, r.description, _money(r.price_cents), r.quantity,
            r.version, _utc(r.created_at), _utc(r.updated_at),
        )
        for r in rows
    ]  # fmt: skip
    if fmt == "csv":
        return csv_rows(values)
    keys = ("id", "sku", "name", "description", "price", "quantity", "version",
            "created_at", "updated_at")  # fmt: skip
    return ndjson_rows(dict(zip(keys, v, strict=True)) for v in values)


async def export_chunks(
    sessions: async_sessionmaker[AsyncSession], where: ItemFilter, keyset: Keyset, fmt: str
) -> AsyncIterator[bytes]:
    """The export as byte chunks, streamed from a server-side cursor (or, for CSV on
    PostgreSQL, from COPY ... TO STDOUT, which formats the rows in the server)."""
    async with sessions() as session:
        if fmt == "csv" and _on_postgresql(session):
            async for chunk in _copy_csv(session, where, keyset):
                yield chunk
            return
        stmt = ItemRepository(session).export_select(where, keyset)
        result = await session.stream(stmt.execution_options(yield_per=EXPORT_ROWS_PER_CHUNK))
        if fmt == "csv":
            yield csv_header()
        async for rows in result.partitions():
            yield await asyncio.to_thread(_format, rows, fmt)


# The export's CSV, written by PostgreSQL itself: the same cells as _format() writes.
_UTC_TEXT = (
    "CASE WHEN extract(microseconds FROM {c})::bigint % 1000000 = 0 "
    "THEN to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "ELSE to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
)


def _protected(column: str) -> Any:
    """SQL for the cell as _format() writes it: an apostrophe before formula starts."""
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


async def _copy_csv(
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
