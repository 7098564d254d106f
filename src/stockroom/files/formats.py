"""CSV and NDJSON, read and written incrementally. Pure: no I/O, no database.

Readers take the body chunk by chunk and give back complete records with their line
numbers; memory is bounded by ``MAX_RECORD_BYTES`` however large the file. Writers turn rows
into bytes, with spreadsheet formula protection for CSV.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stockroom.items.schemas import ITEM_FIELDS, ItemCreate

__all__ = [
    "ASSIGNED_COLUMNS",
    "CSV_COLUMNS",
    "EXPORT_COLUMNS",
    "MAX_RECORD_BYTES",
    "CsvReader",
    "FileError",
    "NdjsonReader",
    "Record",
    "RecordError",
    "csv_header",
    "csv_rows",
    "ndjson_rows",
    "unprotect",
]

# Columns an import reads: the fields an item is created with. The export writes every
# field of an item, as the API does; an import ignores the ones the database assigns.
CSV_COLUMNS: tuple[str, ...] = tuple(ItemCreate.model_fields)
EXPORT_COLUMNS: tuple[str, ...] = ITEM_FIELDS
ASSIGNED_COLUMNS = frozenset(EXPORT_COLUMNS) - frozenset(CSV_COLUMNS)
# One record (a CSV row, possibly over several lines, or an NDJSON line) may be this long.
MAX_RECORD_BYTES = 1_048_576

_TOO_LONG = f"the line is longer than {MAX_RECORD_BYTES} characters"

# A cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV
# injection"); the export prefixes it with an apostrophe. A cell that itself starts with an
# apostrophe gets one too, so that the import can always remove exactly one.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


class FileError(Exception):
    """The file as a whole cannot be read (bad header, bad encoding): nothing after it is.
    ``field``: the column at fault (an unknown, missing or repeated one), or None."""

    def __init__(self, line: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordError:
    """A row that is refused: its line, the column or key at fault (None when the line
    itself cannot be read: bad JSON, a wrong number of cells, too long, not UTF-8), and
    why."""

    line: int
    message: str
    field: str | None = None


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def protect(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def unprotect(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


class _Lines:
    """Bytes in, complete lines out (split on LF only, endings kept), UTF-8 checked."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._partial = ""
        self.line = 0  # lines handed out so far
        self._skipping = False  # inside an overlong line, dropping it up to its end
        self.broken = False  # not UTF-8: nothing after the bad bytes can be read

    def feed(
        self, chunk: bytes, final: bool = False
    ) -> tuple[list[tuple[int, str]], list[RecordError]]:
        """Complete lines as (line number, text), and the lines refused."""
        errors: list[RecordError] = []
        try:
            text = self._partial + self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            # Keep the complete lines before the bad bytes; nothing after them is read.
            text = self._partial + exc.object[: exc.start].decode("utf-8")
            text = text[: text.rfind("\n") + 1]
            self.broken = final = True
            errors.append(
                RecordError(
                    self.line + text.count("\n") + 1,
                    "the file is not valid UTF-8 here; the rest of it was not read",
                )
            )
        pieces = text.split("\n")
        self._partial = pieces.pop()
        lines: list[tuple[int, str]] = []
        for piece in pieces:
            self.line += 1
            if self._skipping:
                self._skipping = False
            elif len(piece) > MAX_RECORD_BYTES:
                errors.append(RecordError(self.line, _TOO_LONG))
            else:
                lines.append((self.line, piece + "\n"))
        if len(self._partial) > MAX_RECORD_BYTES:
            errors.append(RecordError(self.line + 1, _TOO_LONG))
            self._partial = ""
            self._skipping = True
        if final and (self._partial or self._skipping):
            self.line += 1
            if not self._skipping:
                lines.append((self.line, self._partial))
            self._partial = ""
            self._skipping = False
        return lines, errors


def _parse_all(complete: list[tuple[int, list[str]]]) -> Iterator[list[str]] | None:
    """The fields of every record, read by one csv.reader over all their lines: much
    faster than a reader per record, and the same result when each record is read from
    exactly its own lines. Otherwise (a CSV error, or a record that ends before its last
    line) None: the caller reads record by record, which reports the error where it is."""
    reader = csv.reader((line for _, lines in complete for line in lines), strict=True)
    fields: list[list[str]] = []
    end = 0
    try:
        for _, lines in complete:
            fields.append(next(reader, []))
            end += len(lines)
            if reader.line_num != end:
                return None
    except csv.Error:
        return None
    return iter(fields)


def _ends_inside_quotes(line: str, in_quotes: bool) -> bool:
    """Whether a quoted field is still open at the end of ``line`` (RFC 4180: a field is
    quoted only if it starts with a quote; ``""`` inside it is one quote). A quote inside an
    unquoted field is an ordinary character, as Python's csv module reads it, so it cannot
    swallow the lines after it."""
    at_field_start = not in_quotes
    i, end = 0, len(line)
    while i < end:
        char = line[i]
        if in_quotes:
            if char == '"':
                if i + 1 < end and line[i + 1] == '"':
                    i += 1  # an escaped quote
                else:
                    in_quotes = False
        elif char == '"' and at_field_start:
            in_quotes = True
        at_field_start = not in_quotes and char == ","
        i += 1
    return in_quotes


class CsvReader:
    """RFC 4180 CSV with a header row; quoted fields may hold commas, quotes and newlines."""

    def __init__(self) -> None:
        self._lines = _Lines()
        self._pending: list[str] = []  # lines of a record whose quotes are still open
        self._pending_size = 0
        self._in_quotes = False
        self._start = 0
        self.columns: list[str] | None = None

    @property
    def broken(self) -> bool:
        return self._lines.broken

    def feed(self, chunk: bytes, final: bool = False) -> tuple[list[Record], list[RecordError]]:
        lines, errors = self._lines.feed(chunk, final)
        complete: list[tuple[int, list[str]]] = []
        for line_no, text in lines:
            if not self._pending:
                self._start = line_no
            self._pending.append(text)
            self._pending_size += len(text)
            if '"' in text:
                self._in_quotes = _ends_inside_quotes(text, self._in_quotes)
            if not self._in_quotes:  # no quoted field left open: the record is complete
                complete.append((self._start, self._pending))
                self._reset()
            elif self._pending_size > MAX_RECORD_BYTES:
                errors.append(
                    RecordError(self._start, f"row is longer than {MAX_RECORD_BYTES} bytes")
                )
                self._reset()
        if final and self._pending:
            errors.append(RecordError(self._start, "the file ends inside a quoted field"))
            self._reset()
        return self._records(complete, errors)

    def _reset(self) -> None:
        self._pending = []
        self._pending_size = 0
        self._in_quotes = False

    def _records(
        self, complete: list[tuple[int, list[str]]], errors: list[RecordError]
    ) -> tuple[list[Record], list[RecordError]]:
        records: list[Record] = []
        parsed = _parse_all(complete)
        for start, lines in complete:
            if parsed is not None:
                values = next(parsed)
            else:
                try:
                    values = next(csv.reader(lines, strict=True), [])
                except csv.Error as exc:
                    if self.columns is None:
                        # Without a header no row can be read: say so, not "the file is empty".
                        raise FileError(start, f"the header row is not valid CSV: {exc}") from None
                    errors.append(RecordError(start, f"not valid CSV: {exc}"))
                    continue
            if not values or values == [""]:
                continue  # blank line
            if self.columns is None:
                self.columns = self._header(start, values)
                continue
            if len(values) != len(self.columns):
                errors.append(
                    RecordError(start, f"{len(values)} fields, the header has {len(self.columns)}")
                )
                continue
            fields = {c: unprotect(v) for c, v in zip(self.columns, values, strict=True)}
            records.append(Record(start, fields))
        return records, errors

    @staticmethod
    def _header(line: int, values: list[str]) -> list[str]:
        columns = [v.strip().lower() for v in values]
        unknown = [c for c in columns if c not in EXPORT_COLUMNS]
        if unknown:
            raise FileError(line, f"unknown column {unknown[0]!r} in the header", unknown[0])
        missing = [c for c in ("sku", "name", "price") if c not in columns]
        if missing:
            raise FileError(line, f"the header lacks the column {missing[0]!r}", missing[0])
        twice = [c for n, c in enumerate(columns) if c in columns[:n]]
        if twice:
            raise FileError(line, "the header names a column twice", twice[0])
        return columns

    def finish(self) -> None:
        if self.columns is None:
            raise FileError(1, "the file is empty: expected a header row (sku,name,price,...)")


class NdjsonReader:
    """One JSON object per line; blank lines are skipped."""

    columns = EXPORT_COLUMNS

    def __init__(self) -> None:
        self._lines = _Lines()

    @property
    def broken(self) -> bool:
        return self._lines.broken

    def feed(self, chunk: bytes, final: bool = False) -> tuple[list[Record], list[RecordError]]:
        lines, errors = self._lines.feed(chunk, final)
        records: list[Record] = []
        for line_no, text in lines:
            if not text.strip():
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                errors.append(RecordError(line_no, "not valid JSON"))
                continue
            if not isinstance(value, dict):
                errors.append(RecordError(line_no, "expected a JSON object"))
                continue
            records.append(Record(line_no, value))
        return records, errors

    def finish(self) -> None:
        return None


def csv_header() -> bytes:
    return (",".join(EXPORT_COLUMNS) + "\n").encode()


def csv_rows(rows: Iterable[Sequence[Any]]) -> bytes:
    """RFC 4180 CSV (with LF line ends, as PostgreSQL's COPY writes them), text cells
    protected against formula injection. A cell is quoted when it holds a comma, a quote, a
    CR or a LF, as COPY does (Python's csv module leaves a lone CR unquoted when the line
    end is LF, and such a file does not read back)."""
    return "".join(",".join(_cell(v) for v in row) + "\n" for row in rows).encode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        return str(value)
    text = protect(value)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def ndjson_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)
