"""The CSV reader's fast path (one csv.reader over a whole chunk) reads exactly what reading
record by record reads, for any text, split into chunks anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockroom.files import formats
from stockroom.files.formats import CsvReader, FileError

# Few characters, many of them special to CSV: quotes, separators and line ends.
_CSV_TEXT = st.text(alphabet="ab,\"\r\n' ", max_size=200)


def _read(body: bytes, cut: int) -> tuple[list[tuple[int, dict[str, str]]], list[object]]:
    reader = CsvReader()
    records: list[tuple[int, dict[str, str]]] = []
    errors: list[object] = []
    try:
        for chunk, final in ((body[:cut], False), (body[cut:], True)):
            got, bad = reader.feed(chunk, final)
            records += [(record.line, record.fields) for record in got]
            errors += bad
    except FileError as exc:
        errors.append(("file", exc.line, exc.message))
    return records, errors


@settings(max_examples=300, deadline=None)
@given(_CSV_TEXT, st.integers(min_value=0, max_value=250))
def test_the_fast_path_reads_what_record_by_record_reads(text: str, cut: int) -> None:
    body = ("sku,name,price\n" + text).encode()
    fast = _read(body, cut)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formats, "_parse_all", lambda complete: None)
        slow = _read(body, cut)
    assert fast == slow
