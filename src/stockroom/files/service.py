"""Streaming import and export of items.

Import: the body arrives in chunks; each chunk is parsed and validated in a worker thread
(so the event loop keeps answering other requests), and rows are upserted by sku in batches
by the items writer. Memory is bounded by a chunk and a batch, however large the file: even
the check for a sku that appears twice in one file is done by the database, in a temporary
table.

Export: rows come from a server-side cursor and leave as soon as they are formatted (or, for
CSV on PostgreSQL, as COPY writes them); a client that goes away cancels the stream, which
closes the cursor and returns the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from stockroom.database import Database
from stockroom.db import utcnow
from stockroom.errors import InvalidRequestError
from stockroom.events.log import format_time
from stockroom.files.formats import (
    ASSIGNED_COLUMNS,
    CsvReader,
    FileError,
    NdjsonReader,
    RecordError,
    csv_header,
    csv_rows,
)
from stockroom.files.schemas import ImportReport, ImportRow
from stockroom.items.common import to_cents
from stockroom.items.models import ItemRow, fold_name
from stockroom.items.repository import Listing
from stockroom.items.schemas import item_json, item_wire
from stockroom.items.store import BatchCounts, ImportBatch, ItemStore, ValidRow
from stockroom.items.writer import ItemWriter

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "BodyHasher",
    "ImportRejectedError",
    "Reader",
    "export_chunks",
    "import_items",
]

# A batch: one COPY and a few set-based statements on PostgreSQL (bigger is cheaper there),
# a few hundred statements on SQLite.
BATCH_ROWS = 5_000
EXPORT_ROWS_PER_CHUNK = 1_000

Reader = CsvReader | NdjsonReader
IMPORT_FORMATS: dict[str, type[Reader]] = {
    "text/csv": CsvReader,
    "application/x-ndjson": NdjsonReader,
    "application/ndjson": NdjsonReader,
}
C = TypeVar("C")  # the connection type of the database written to

EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}


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
                "field": e.field,
                "message": e.message,
            }
            for e in report.errors
        ]
        self.extra = report.model_dump(exclude={"errors"})


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
        fields = {k: v for k, v in record.fields.items() if k not in ASSIGNED_COLUMNS}
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
        problems: dict[int, ErrorDetails] = {}
        for error in exc.errors(include_url=False):
            index = error["loc"][0]
            assert isinstance(index, int)
            problems.setdefault(index, error)
        errors.extend(
            RecordError(lines[index], _problem(error), _field(error))
            for index, error in problems.items()
        )
        keep = [index for index in range(len(values)) if index not in problems]
        lines = [lines[index] for index in keep]
        valid = _ROWS.validate_python([values[index] for index in keep])
    return [
        ValidRow(
            line, row["sku"], row["name"], fold_name(row["name"]), row.get("description"),
            to_cents(row["price"]), row.get("quantity"), row.get("reorder_point"),
            "reorder_point" in row,
        )
        for line, row in zip(lines, valid, strict=True)
    ]  # fmt: skip


def _from_csv(fields: dict[str, Any]) -> dict[str, Any]:
    """CSV has only text: an empty description is null, an empty quantity is absent, an
    empty reorder point is null (the column is there: it clears the item's)."""
    if fields.get("description") == "":
        fields["description"] = None
    quantity = fields.pop("quantity", "")
    if quantity != "":
        fields["quantity"] = _csv_int(quantity)
    if "reorder_point" in fields:
        point = fields["reorder_point"]
        fields["reorder_point"] = None if point == "" else _csv_int(point)
    return fields


def _csv_int(cell: str) -> int | str:
    """A cell of ASCII digits as the integer it is; anything else as it is (validation
    refuses it, as it refuses a JSON string there)."""
    return int(cell) if cell.isdigit() and cell.isascii() else cell


def _problem(error: ErrorDetails) -> str:
    """A row's problem as ``field: message`` (the location without the row's index)."""
    where = ".".join(str(part) for part in error["loc"][1:]) or "row"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _field(error: ErrorDetails) -> str | None:
    """The column or key at fault: the location's first part after the row's index."""
    return str(error["loc"][1]) if len(error["loc"]) > 1 else None


async def import_items(
    database: Database[C],
    writer: ItemWriter[C],
    chunks: AsyncIterator[bytes],
    reader: Reader,
    *,
    atomic: bool,
    dry_run: bool = False,
    connection: C | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read the whole stream and upsert its rows; returns the report.

    With ``connection`` (already in the caller's write transaction: an idempotency key's
    unit of work) or ``atomic``, the whole import is one transaction; otherwise each batch
    commits on its own, where the database keeps a session across commits (the check for
    a sku seen earlier in the file lives in a temporary table): through PgBouncer it is one
    transaction too. Raises :class:`ImportRejectedError` when nothing may be applied: an
    unreadable header, or any bad row in atomic mode.

    ``dry_run``: the file is checked as an atomic import would check it (every row
    validated and written, skus repeated in the file found), in one transaction that is
    always rolled back, so that the counts are exact and nothing is applied; bad rows raise
    :class:`ImportRejectedError` with the whole report.
    """

    def one_import(held: C, *, one_transaction: bool) -> _Import[C]:
        return _Import(
            database=database,
            writer=writer,
            connection=held,
            reader=reader,
            atomic=atomic,
            dry_run=dry_run,
            one_transaction=one_transaction,
            progress=progress,
        )

    if dry_run:
        try:
            async with database.transaction() as held:
                raise _RollBack(await one_import(held, one_transaction=True).run(chunks))
        except _RollBack as done:
            return done.report
    if connection is not None:
        return await one_import(connection, one_transaction=True).run(chunks)
    if atomic or not database.keeps_sessions:
        async with database.transaction() as held:
            return await one_import(held, one_transaction=True).run(chunks)
    async with database.connection() as held:
        return await one_import(held, one_transaction=False).run(chunks)


class _RollBack(Exception):  # noqa: N818 - not an error: how a dry run ends
    """Raised through a dry run's transaction, so that it rolls back; carries the report."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__("dry run")
        self.report = report


@dataclass(kw_only=True)
class _Import(Generic[C]):
    """One import: where its rows go, how they commit, and its report."""

    database: Database[C]
    writer: ItemWriter[C]
    connection: C
    reader: Reader
    atomic: bool
    # Checked and written as atomic would, but every batch written (to find every sku
    # repeated in the file) and the whole report given: the caller rolls it all back.
    dry_run: bool
    # The whole file in one transaction (the caller's, or one opened for it); otherwise
    # each batch commits on its own.
    one_transaction: bool
    progress: Callable[[int], None] | None
    report: ImportReport = field(default_factory=ImportReport)

    async def run(self, chunks: AsyncIterator[bytes]) -> ImportReport:
        writer, connection, report = self.writer, self.connection, self.report
        if self.one_transaction:
            await writer.begin_import(connection)
            await self._read_and_write(chunks)
            if self.dry_run and report.failed:
                raise ImportRejectedError(
                    f"{report.failed} bad row(s); nothing was imported (mode=dry-run).", report
                )
            if self.atomic and report.failed:
                raise ImportRejectedError(
                    f"{report.failed} bad row(s); nothing was imported (mode=atomic).",
                    ImportReport(failed=report.failed, errors=report.errors),
                )
            await writer.end_import(connection)
            return report
        async with self.database.write(connection):
            await writer.begin_import(connection)
        try:
            await self._read_and_write(chunks)
        finally:
            # Leave the pooled connection as we found it; if it broke, it is discarded.
            with contextlib.suppress(Exception):
                async with self.database.write(connection):
                    await writer.end_import(connection)
        return report

    async def _read_and_write(self, chunks: AsyncIterator[bytes]) -> None:
        """Read batches (in a task of their own) and write each as it comes."""
        report = self.report
        rows_read = 0
        apply = True
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        producer = asyncio.create_task(
            _read_batches(chunks, self.reader, BATCH_ROWS, queue, self.writer.prepare_import_batch)
        )
        try:
            while (batch := await queue.get()) is not None:
                for error in batch.errors:
                    report.fail(error.line, error.message, error.field)
                rows_read += len(batch.rows) + len(batch.errors)
                if self.progress is not None:
                    self.progress(rows_read)
                if self.atomic and report.failed and not self.dry_run:
                    apply = False  # read on to report every bad row, but write nothing more
                if batch.ready is not None and apply:
                    await self._write(batch.ready)
            await producer  # raises what the reading or parsing raised
        except FileError as exc:
            report.fail(exc.line, exc.message, exc.field)
            if isinstance(self.reader, CsvReader) and self.reader.columns is None:
                raise ImportRejectedError(exc.message, report) from None
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _write(self, batch: ImportBatch) -> None:
        connection = self.connection
        if self.one_transaction:
            counts = await self.writer.import_batch(connection, batch)
        else:
            async with self.database.write(connection):
                counts = await self.writer.import_batch(connection, batch)
        _count(self.report, counts)


@dataclass
class _Batch:
    rows: list[ValidRow] = field(default_factory=list)
    # Problems found while reading the rows of this batch (their lines come before its end).
    errors: list[RecordError] = field(default_factory=list)
    # The rows as the writer takes them (made by _read_batches before the batch is queued).
    ready: ImportBatch | None = None


async def _read_batches(
    chunks: AsyncIterator[bytes],
    reader: Reader,
    batch_rows: int,
    queue: asyncio.Queue[_Batch | None],
    prepare: Callable[[list[ValidRow], dt.datetime], ImportBatch],
) -> None:
    """Read and parse (in a worker thread) the next batch while the previous one is written:
    the database and the parser work at the same time, and memory holds at most three
    batches (one written, one waiting in the queue, one being read). Each batch is made
    ready for the writer (``prepare``, in a worker thread too) before it is queued: its
    changes take the time it was made ready at. Ends with None."""

    async def ready(batch: _Batch) -> _Batch:
        if batch.rows:
            batch.ready = await asyncio.to_thread(prepare, batch.rows, utcnow())
        return batch

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
                await queue.put(await ready(full))
    except FileError:
        # Problems reported before the file turned out unreadable.
        await queue.put(await ready(batch))
        raise
    else:
        await queue.put(await ready(batch))
    finally:
        # The end, for the writer; unless the writer is gone and cancelled us.
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            await queue.put(None)


def _count(report: ImportReport, counts: BatchCounts) -> None:
    for line, sku, first in counts.repeated or ():
        report.fail(line, f"sku {sku!r} appears again (first on line {first})", "sku")
    report.created += counts.created
    report.updated += counts.updated
    report.unchanged += counts.unchanged


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


def _format(rows: Sequence[ItemRow], fmt: str) -> bytes:
    """Rows as the API writes items: NDJSON lines are the API's JSON; CSV cells its values."""
    if fmt == "ndjson":
        return b"".join(item_json(row) + b"\n" for row in rows)
    return csv_rows(
        [format_time(v) if isinstance(v, dt.datetime) else v for v in _cells(row)] for row in rows
    )


def _cells(row: ItemRow) -> list[Any]:
    return list(item_wire(row).values())


async def export_chunks(store: ItemStore[Any], listing: Listing, fmt: str) -> AsyncIterator[bytes]:
    """The export as byte chunks, streamed from a server-side cursor (or from the
    database's own CSV writer, where it has one)."""
    database_csv = store.export_csv(listing) if fmt == "csv" else None
    if database_csv is not None:
        async for chunk in database_csv:
            yield chunk
        return
    if fmt == "csv":
        yield csv_header()
    async for rows in store.export_rows(listing, EXPORT_ROWS_PER_CHUNK):
        yield await asyncio.to_thread(_format, rows, fmt)
