"""CSV and NDJSON readers and writers (files.formats): what an import reads from a file and
what an export writes, line numbers in errors, and exports that read back unchanged."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockroom.files import formats
from stockroom.files.formats import (
    EXPORT_COLUMNS,
    MAX_RECORD_BYTES,
    CsvReader,
    FileError,
    NdjsonReader,
    csv_header,
    csv_rows,
    ndjson_rows,
    unprotect,
)
from tests.unit.properties import UNTIMED

Reader = CsvReader | NdjsonReader
Read = tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]


def read(body: bytes, reader: Reader | None = None, *, cuts: tuple[int, ...] = ()) -> Read:
    """Feed ``body`` cut at ``cuts``; the records as (line, fields) and errors as (line,
    message). A FileError propagates."""
    reader = CsvReader() if reader is None else reader
    bounds = [0, *cuts, len(body)]
    chunks = [body[start:end] for start, end in itertools.pairwise(bounds)]
    records: list[tuple[int, dict[str, Any]]] = []
    errors: list[tuple[int, str]] = []
    for index, chunk in enumerate(chunks):
        got, bad = reader.feed(chunk, index == len(chunks) - 1)
        records += [(record.line, record.fields) for record in got]
        errors += [(error.line, error.message) for error in bad]
    reader.finish()
    return records, errors


# --- The fast path (one csv.reader over a chunk) ----------------------------------------------

# Few characters, many of them special to CSV: quotes, separators and line ends.
_CSV_TEXT = st.text(alphabet="ab,\"\r\n' ", max_size=200)


def _read_either(body: bytes, cut: int) -> tuple[list[tuple[int, dict[str, str]]], list[object]]:
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


@settings(UNTIMED, max_examples=300)
@given(_CSV_TEXT, st.integers(min_value=0, max_value=250))
def test_the_fast_path_reads_what_record_by_record_reads(text: str, cut: int) -> None:
    """The CSV reader's fast path (one csv.reader over a whole chunk) reads exactly what
    reading record by record reads, for any text, split into chunks anywhere."""
    body = ("sku,name,price\n" + text).encode()
    fast = _read_either(body, cut)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formats, "_parse_all", lambda complete: None)
        slow = _read_either(body, cut)
    assert fast == slow


# --- Round trips: what the export writes, the import reads ------------------------------------

# Any text a cell may hold (no NUL: the schemas refuse it, and PostgreSQL cannot store it),
# weighted towards what CSV and spreadsheets treat specially.
_CELL = st.text(
    alphabet=st.one_of(
        st.sampled_from(",\"'\r\n\t =+-@"),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    ),
    max_size=20,
)
_ROW = st.lists(
    st.one_of(_CELL, st.none()), min_size=len(EXPORT_COLUMNS), max_size=len(EXPORT_COLUMNS)
)


@settings(UNTIMED, max_examples=150)
@given(st.lists(_ROW, max_size=5), st.data())
def test_an_exported_csv_reads_back_cell_for_cell(rows: list[list[str | None]], data: Any) -> None:
    body = csv_header() + csv_rows(rows)
    cuts = tuple(sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=3))))
    records, errors = read(body, cuts=cuts)
    assert errors == []
    expected = [
        dict(zip(EXPORT_COLUMNS, (cell or "" for cell in row), strict=True)) for row in rows
    ]
    assert [fields for _, fields in records] == expected
    # Each record is numbered by the line it starts on: a quoted cell may hold line ends.
    starts = [2]
    for row in rows:
        starts.append(starts[-1] + csv_rows([row]).count(b"\n"))
    assert [line for line, _ in records] == starts[:-1]


_JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)
)


@settings(UNTIMED, max_examples=100)
@given(st.lists(st.dictionaries(st.text(max_size=8), _JSON_VALUE, max_size=5), max_size=5))
def test_an_exported_ndjson_reads_back_object_for_object(rows: list[dict[str, Any]]) -> None:
    body = ndjson_rows(rows)
    records, errors = read(body, NdjsonReader(), cuts=(len(body) // 2,))
    assert errors == []
    assert records == [(line, row) for line, row in enumerate(rows, start=1)]


# --- Writing --------------------------------------------------------------------------------


def test_csv_rows_quote_as_copy_does_with_lf_line_ends() -> None:
    row = ["plain", "a,b", 'say "hi"', "two\nlines", "lone\rcr", None, 19, "", "é"]
    assert csv_rows([row]) == 'plain,"a,b","say ""hi""","two\nlines","lone\rcr",,19,,é\n'.encode()


def test_csv_header_names_every_export_column() -> None:
    assert csv_header() == (
        b"id,sku,name,description,price,quantity,version,created_at,updated_at,reorder_point\n"
    )


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted"])
def test_a_formula_cell_is_written_after_an_apostrophe_and_read_back_without(cell: str) -> None:
    written = csv_rows([[cell]]).decode()
    assert written.lstrip('"').startswith("'")
    header = "sku,name,price\n"
    records, errors = read(f"{header}A,{written.rstrip()},1\n".encode())
    assert errors == []
    assert records == [(2, {"sku": "A", "name": cell, "price": "1"})]


def test_numbers_are_written_as_they_are_not_as_formulas() -> None:
    assert csv_rows([[-3, 0, 12]]) == b"-3,0,12\n"


def test_unprotect_removes_exactly_one_apostrophe() -> None:
    assert unprotect("''x") == "'x"
    assert unprotect("'") == ""
    assert unprotect("x'") == "x'"


def test_ndjson_rows_are_one_json_object_a_line() -> None:
    body = ndjson_rows([{"name": "two\nlines"}, {"price": "1.00"}])
    assert body == b'{"name":"two\\nlines"}\n{"price":"1.00"}\n'
    assert [orjson.loads(line) for line in body.splitlines()] == [
        {"name": "two\nlines"},
        {"price": "1.00"},
    ]


# --- Reading CSV ----------------------------------------------------------------------------


def test_a_utf8_bom_is_not_part_of_the_first_column() -> None:
    records, _ = read(b"\xef\xbb\xbfsku,name,price\nA,a,1\n")
    assert records == [(2, {"sku": "A", "name": "a", "price": "1"})]


def test_a_bom_split_across_chunks_is_still_dropped() -> None:
    body = b"\xef\xbb\xbfsku,name,price\nA,a,1"
    assert read(body, cuts=(1, 2)) == ([(2, {"sku": "A", "name": "a", "price": "1"})], [])


def test_a_character_split_across_chunks_is_read_whole() -> None:
    body = "sku,name,price\nA,é€,1\n".encode()
    cut = body.index(b"\x82")  # inside the euro sign
    assert read(body, cuts=(cut - 2, cut))[0] == [(2, {"sku": "A", "name": "é€", "price": "1"})]


def test_crlf_line_ends_and_a_last_line_without_one() -> None:
    records, errors = read(b"sku,name,price\r\nA,a,1\r\nB,b,2")
    assert errors == []
    assert records == [
        (2, {"sku": "A", "name": "a", "price": "1"}),
        (3, {"sku": "B", "name": "b", "price": "2"}),
    ]


def test_header_names_are_trimmed_and_case_folded() -> None:
    records, _ = read(b" SKU ,Name,PRICE\nA,a,1\n")
    assert records == [(2, {"sku": "A", "name": "a", "price": "1"})]


def test_columns_may_come_in_any_order_and_export_columns_are_read() -> None:
    records, _ = read(b"price,id,name,sku,version\n1.00,7,a,A,3\n")
    assert records == [(2, {"price": "1.00", "id": "7", "name": "a", "sku": "A", "version": "3"})]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the file is empty"),
        (b"\n\r\n\n", "the file is empty"),
        (b"sku,name,colour\n", "unknown column 'colour' in the header"),
        (b"sku,name\nA,a\n", "the header lacks the column 'price'"),
        (b"name,price\n", "the header lacks the column 'sku'"),
        (b"sku,name,price,SKU\n", "the header names a column twice"),
        (b'sku,"na"me,price\n', "the header row is not valid CSV"),
    ],
)
def test_a_bad_header_is_a_file_error_on_line_1(body: bytes, message: str) -> None:
    with pytest.raises(FileError) as caught:
        read(body)
    assert caught.value.line == 1
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_the_header_is_the_first_non_blank_line_and_keeps_its_number() -> None:
    with pytest.raises(FileError) as caught:
        read(b"\n\nsku,name,colour\n")
    assert caught.value.line == 3


def test_blank_lines_are_skipped_but_counted() -> None:
    records, errors = read(b"sku,name,price\n\nA,a,1\n\n\nB,b,2\n")
    assert errors == []
    assert [line for line, _ in records] == [3, 6]


def test_a_quoted_field_may_hold_commas_quotes_and_line_ends() -> None:
    body = b'sku,name,price\nA,"one, ""two""\nthree\r\nfour",1\nB,b,2\n'
    records, errors = read(body)
    assert errors == []
    assert records == [
        (2, {"sku": "A", "name": 'one, "two"\nthree\r\nfour', "price": "1"}),
        (5, {"sku": "B", "name": "b", "price": "2"}),
    ]


def test_a_lone_cr_inside_quotes_is_part_of_the_cell() -> None:
    records, errors = read(b'sku,name,price\nA,"a\rb",1\n')
    assert errors == []
    assert records == [(2, {"sku": "A", "name": "a\rb", "price": "1"})]


def test_a_lone_cr_outside_quotes_is_an_error_on_its_line_only() -> None:
    records, errors = read(b"sku,name,price\nA,a\rb,1\nB,b,2\n")
    assert records == [(3, {"sku": "B", "name": "b", "price": "2"})]
    assert [line for line, _ in errors] == [2]
    assert errors[0][1].startswith("not valid CSV")


def test_a_quote_inside_an_unquoted_field_is_an_ordinary_character() -> None:
    # It opens no quoted field: the lines after it are records of their own.
    records, errors = read(b'sku,name,price\nA,5" pipe,1\nB,b,2\n')
    assert errors == []
    assert records == [
        (2, {"sku": "A", "name": '5" pipe', "price": "1"}),
        (3, {"sku": "B", "name": "b", "price": "2"}),
    ]


def test_text_after_a_closing_quote_is_an_error_on_that_row() -> None:
    records, errors = read(b'sku,name,price\nA,"a"b,1\nB,b,2\n')
    assert records == [(3, {"sku": "B", "name": "b", "price": "2"})]
    assert [line for line, _ in errors] == [2]


def test_a_row_with_the_wrong_number_of_fields_is_reported_and_skipped() -> None:
    records, errors = read(b"sku,name,price\nA,a,1,extra\nB,b\nC,c,3\n")
    assert records == [(4, {"sku": "C", "name": "c", "price": "3"})]
    assert errors == [(2, "4 fields, the header has 3"), (3, "2 fields, the header has 3")]


def test_a_file_ending_inside_a_quoted_field_is_reported_where_the_row_starts() -> None:
    records, errors = read(b'sku,name,price\nA,a,1\nB,"never closed,1\nC,c,3\n')
    assert records == [(2, {"sku": "A", "name": "a", "price": "1"})]
    assert errors == [(3, "the file ends inside a quoted field")]


def test_an_apostrophe_before_a_formula_is_removed_on_import() -> None:
    records, _ = read(b"sku,name,price\nA,'=1+1,1\n")
    assert records == [(2, {"sku": "A", "name": "=1+1", "price": "1"})]


def test_invalid_utf8_stops_the_reading_at_its_line() -> None:
    reader = CsvReader()
    records, errors = reader.feed(b"sku,name,price\nA,a,1\nB,\xff,2\nC,c,3\n", final=False)
    assert [(r.line, r.fields["sku"]) for r in records] == [(2, "A")]
    assert [(e.line, e.message) for e in errors] == [
        (3, "the file is not valid UTF-8 here; the rest of it was not read")
    ]
    assert reader.broken


def test_invalid_utf8_in_the_header_leaves_no_header() -> None:
    reader = CsvReader()
    _, errors = reader.feed(b"sku,\xffname,price\nA,a,1\n", final=True)
    assert [e.line for e in errors] == [1]
    with pytest.raises(FileError, match="the file is empty"):
        reader.finish()


def test_an_overlong_line_is_dropped_and_the_next_is_read_with_its_number() -> None:
    body = b"sku,name,price\n" + b"x" * (MAX_RECORD_BYTES + 1) + b"\nA,a,1\n"
    records, errors = read(body, cuts=(20, MAX_RECORD_BYTES // 2))
    assert records == [(3, {"sku": "A", "name": "a", "price": "1"})]
    assert errors == [(2, f"the line is longer than {MAX_RECORD_BYTES} characters")]


def test_an_overlong_quoted_row_spanning_lines_is_dropped() -> None:
    half = b"y" * (MAX_RECORD_BYTES // 2)
    body = b'sku,name,price\nA,"' + half + b"\n" + half + b"\n" + half + b'",1\nB,b,2\n'
    records, errors = read(body)
    assert records[-1] == (5, {"sku": "B", "name": "b", "price": "2"})
    assert (2, f"row is longer than {MAX_RECORD_BYTES} bytes") in errors


# --- Reading NDJSON -------------------------------------------------------------------------


def test_ndjson_reports_each_bad_line_and_keeps_the_good_ones() -> None:
    body = b'{"sku":"A"}\n\n[1,2]\nnot json\n"text"\r\n{"sku":"B"}'
    records, errors = read(body, NdjsonReader())
    assert records == [(1, {"sku": "A"}), (6, {"sku": "B"})]
    assert errors == [
        (3, "expected a JSON object"),
        (4, "not valid JSON"),
        (5, "expected a JSON object"),
    ]


def test_ndjson_with_a_bom_and_crlf() -> None:
    records, errors = read(b'\xef\xbb\xbf{"sku":"A"}\r\n{"sku":"B"}\r\n', NdjsonReader())
    assert errors == []
    assert records == [(1, {"sku": "A"}), (2, {"sku": "B"})]


def test_an_empty_ndjson_file_has_no_records_and_no_error() -> None:
    assert read(b"", NdjsonReader()) == ([], [])


def test_an_overlong_ndjson_line_is_dropped() -> None:
    body = b'{"a":1}\n' + b" " * (MAX_RECORD_BYTES + 1) + b'\n{"b":2}\n'
    assert read(body, NdjsonReader(), cuts=(3, 1000)) == (
        [(1, {"a": 1}), (3, {"b": 2})],
        [(2, f"the line is longer than {MAX_RECORD_BYTES} characters")],
    )
