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

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stockroom.db import is_unique_violation, on_postgresql, utcnow, write_connection
from stockroom.errors import InvalidRequestError
from stockroom.events import log as events
from stockroom.files import postgresql
from stockroom.files.formats import (
    CsvReader,
    FileError,
    NdjsonReader,
    RecordError,
    csv_header,
    csv_rows,
    ndjson_rows,
)
from stockroom.files.schemas import ImportReport, ImportRow, ValidRow
from stockroom.items.models import Item, fold_name
from stockroom.items.repository import ItemFilter, ItemRepository, Keyset
from stockroom.items.service import to_cents
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
REASON_IMPORT = postgresql.REASON_IMPORT
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
    rows: list[ValidRow] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


_ROWS = TypeAdapter(list[ImportRow])


def _parse(reader: Reader, chunk: bytes, final: bool) -> _Parsed:
    """Decode, split and validate one chunk. Runs in a worker thread."""
    records, errors = reader.feed(chunk, final)
    is_csv = isinstance(reader, CsvReader)
    lines: list[int] = []
    values: list[dict[str, Any]] = []
    for record in records:
        fields = {k: v for k, v in record.fields.items() if k not in _IGNORED_COLUMNS}
        lines.append(record.line)
        values.append(_from_csv(fields) if is_csv else fields)
    parsed = _Parsed(rows=_validate(lines, values, errors), errors=errors)
    if final or reader.broken:
        reader.finish()
    parsed.errors.sort(key=lambda error: error.line)
    return parsed


def _validate(
    lines: list[int], values: list[dict[str, Any]], errors: list[RecordError]
) -> list[ValidRow]:
    """The valid rows of a chunk, validated in one call; a bad row's first problem goes to
    ``errors`` (then the good rows are validated again: bad rows are rare)."""
    try:
        valid = _ROWS.validate_python(values)
    except ValidationError as exc:
        problems: dict[int, str] = {}
        for error in exc.errors(include_url=False):
            index = error["loc"][0]
            assert isinstance(index, int)
            problems.setdefault(index, _problem(error))
        errors.extend(RecordError(lines[index], problem) for index, problem in problems.items())
        keep = [index for index in range(len(values)) if index not in problems]
        lines = [lines[index] for index in keep]
        valid = _ROWS.validate_python([values[index] for index in keep])
    return [
        ValidRow(
            line, row["sku"], row["name"], fold_name(row["name"]), row.get("description"),
            to_cents(row["price"]), row.get("quantity"),
        )
        for line, row in zip(lines, valid, strict=True)
    ]  # fmt: skip


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


def _problem(error: ErrorDetails) -> str:
    """A row's problem as ``field: message`` (the location without the row's index)."""
    where = ".".join(str(part) for part in error["loc"][1:]) or "row"
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
            if on_postgresql(session):
                await session.execute(text(postgresql.CREATE_BATCH_TABLE))
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
                await session.execute(text(postgresql.DROP_BATCH_TABLE))
                await session.commit()
            await session.close()
    return report


@dataclass
class _Batch:
    rows: list[ValidRow] = field(default_factory=list)
    # Problems found while reading the rows of this batch (their lines come before its end).
    errors: list[RecordError] = field(default_factory=list)


async def _read_batches(
    chunks: AsyncIterator[bytes],
    reader: Reader,
    batch_rows: int,
    queue: asyncio.Queue[_Batch | None],
) -> None:
    """Read and parse (in a worker thread) the next batch while the previous one is written:
    the database and the parser work at the same time, and memory holds at most three
    batches (one written, one waiting in the queue, one being read). Ends with None."""
    batch = _Batch()
    try:
        final = False
        iterator = aiter(chunks)
        while not final and not reader.broken:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                chunk, final = b"", True
            parsed = await asyncio.to_thread(_parse, reader, chunk, final)
            batch.rows += parsed.rows
            batch.errors += parsed.errors
            # Whole batches of one size but the last: the same statements every time.
            while len(batch.rows) >= batch_rows:
                full = _Batch(batch.rows[:batch_rows], batch.errors)
                batch = _Batch(batch.rows[batch_rows:])
                await queue.put(full)
    except FileError:
        await queue.put(batch)  # problems reported before the file turned out unreadable
        raise
    else:
        await queue.put(batch)
    finally:
        # The end, for the writer; unless the writer is gone and cancelled us.
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            await queue.put(None)


async def _run(
    session: AsyncSession,
    chunks: AsyncIterator[bytes],
    reader: Reader,
    options: ImportOptions,
    report: ImportReport,
) -> None:
    batch_rows = BATCH_ROWS_POSTGRESQL if on_postgresql(session) else BATCH_ROWS
    rows_read = 0
    apply = True
    queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
    producer = asyncio.create_task(_read_batches(chunks, reader, batch_rows, queue))
    try:
        while (batch := await queue.get()) is not None:
            for error in batch.errors:
                report.fail(error.line, error.message)
            rows_read += len(batch.rows) + len(batch.errors)
            if options.progress is not None:
                options.progress(rows_read)
            if options.atomic and report.failed:
                apply = False  # keep reading to report every bad row, but write nothing more
            if batch.rows:
                apply = await _apply_batch(session, batch.rows, report, apply=apply)
                if options.atomic and report.failed:
                    apply = False
                if not options.one_transaction:
                    await session.commit()
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


async def _apply_batch(
    session: AsyncSession, rows: list[ValidRow], report: ImportReport, *, apply: bool
) -> bool:
    """Upsert one batch by sku; returns whether to go on applying."""
    postgres = on_postgresql(session)
    if postgres:
        unique = await postgresql.first_time_seen(session, rows, report)
    else:
        unique = await _first_time_seen(session, rows, report)
    if not apply or not unique:
        return apply
    upsert = postgresql.upsert if postgres else _upsert
    for attempt in range(_RETRIES_ON_RACE):
        counts = postgresql.Counts()
        try:
            async with session.begin_nested():
                await upsert(session, unique, counts)
        except (IntegrityError, postgresql.RaceError) as exc:
            # Another request created one of these skus after we looked: look again.
            unique_violation = isinstance(exc, postgresql.RaceError) or is_unique_violation(exc)
            if not unique_violation or attempt == _RETRIES_ON_RACE - 1:
                raise
            continue
        report.created += counts.created
        report.updated += counts.updated
        report.unchanged += counts.unchanged
        return True
    return True


async def _first_time_seen(
    session: AsyncSession, rows: list[ValidRow], report: ImportReport
) -> list[ValidRow]:
    """Drop (and report) rows whose sku came earlier in the file."""
    skus = {row.sku for row in rows}
    found = await session.execute(select(_seen.c.sku, _seen.c.line).where(_seen.c.sku.in_(skus)))
    first: dict[str, int] = dict(found.all())  # from earlier batches
    unique: list[ValidRow] = []
    for row in rows:
        if row.sku in first:
            report.fail(row.line, f"sku {row.sku!r} appears again (first on line {first[row.sku]})")
        else:
            first[row.sku] = row.line
            unique.append(row)
    if unique:
        await session.execute(insert(_seen), [{"sku": r.sku, "line": r.line} for r in unique])
    return unique


async def _upsert(
    session: AsyncSession, rows: Sequence[ValidRow], counts: postgresql.Counts
) -> None:
    now = utcnow()
    skus = [row.sku for row in rows]
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
    new = [row for row in rows if row.sku not in existing]
    new_ids: list[int] = []
    adjustments: list[dict[str, Any]] = []
    if new:
        created = await session.execute(
            insert(Item).returning(Item.id, Item.sku),
            [
                {
                    "sku": row.sku,
                    "name": row.name,
                    "name_key": row.name_key,
                    "description": row.description,
                    "price_cents": row.price_cents,
                    "quantity": row.quantity or 0,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for row in new
            ],
        )
        ids = {sku: item_id for item_id, sku in created}
        new_ids = list(ids.values())
        adjustments += [
            _adjustment(ids[row.sku], row.quantity, row.quantity, now)
            for row in new
            if row.quantity
        ]
        counts.created += len(new)
    changes: list[dict[str, Any]] = []
    for row in rows:
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
    written: Sequence[Adjustment] = []
    if adjustments:
        written = (
            await session.scalars(insert(Adjustment).returning(Adjustment), adjustments)
        ).all()
    await _record_events(session, new_ids, changes, written)


async def _record_events(
    session: AsyncSession,
    created: Sequence[int],
    changes: Sequence[dict[str, Any]],
    adjustments: Sequence[Adjustment],
) -> None:
    """The batch's events, as the API writes them: ``item.created`` for new items,
    ``item.updated`` where name, description or price changed, ``stock.adjusted`` for each
    ledger row."""
    updated = [c["id"] for c in changes if c.keys() & {"name", "description", "price_cents"}]
    kinds = dict.fromkeys(created, events.ITEM_CREATED)
    kinds.update(dict.fromkeys(updated, events.ITEM_UPDATED))
    items = {}
    if kinds:
        found = await session.scalars(
            select(Item).where(Item.id.in_(list(kinds))).execution_options(populate_existing=True)
        )
        items = {item.id: item for item in found}
    rows = [events.item_event(kinds[item_id], items[item_id]) for item_id in sorted(kinds)]
    rows += [events.adjustment_event(adjustment) for adjustment in adjustments]
    await events.record_many(session, rows)


def _changes(current: Any, row: ValidRow) -> dict[str, Any]:
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
        if fmt == "csv" and on_postgresql(session):
            async for chunk in postgresql.copy_csv(session, where, keyset):
                yield chunk
            return
        stmt = ItemRepository(session).export_select(where, keyset)
        result = await session.stream(stmt.execution_options(yield_per=EXPORT_ROWS_PER_CHUNK))
        if fmt == "csv":
            yield csv_header()
        async for rows in result.partitions():
            yield await asyncio.to_thread(_format, rows, fmt)
