"""The HTTP helpers every router shares (stockroom.http): opaque cursors, entity tags and the
list envelope."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockroom.errors import InvalidRequestError
from stockroom.http import (
    ETAG_DOC,
    Page,
    decode_cursor,
    encode_cursor,
    etag_matches,
    make_etag,
    page_response,
)
from tests.unit.properties import UNTIMED

# What cursors hold: sort keys, ids, prices in cents, names and timestamps as text.
_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
_PAYLOAD = st.lists(st.one_of(_JSON_SCALAR, st.lists(_JSON_SCALAR, max_size=3)), max_size=5)
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]*")


@settings(UNTIMED, max_examples=100)
@given(_PAYLOAD)
def test_a_cursor_decodes_to_what_was_encoded(payload: list[Any]) -> None:
    cursor = encode_cursor(payload)
    assert _URL_SAFE.fullmatch(cursor), "a cursor goes into a query string unescaped"
    assert decode_cursor(cursor) == payload


def test_a_cursor_has_no_padding_and_padding_is_still_accepted() -> None:
    cursor = encode_cursor(["id", 1, 1])
    assert not cursor.endswith("=")
    padded = cursor + "=" * (-len(cursor) % 4)
    assert decode_cursor(padded) == ["id", 1, 1]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "a",  # not a whole base64 quantum
        "!!!",
        "not-a-cursor",
        "é",
        _b64(b"not json"),
        _b64(b"\xff\xfe"),
        _b64(b'{"a": 1}'),  # JSON, but not a list
        _b64(b"1"),
        _b64(b'"text"'),
        _b64(b"null"),
        "A" * 3000,
    ],
)
def test_a_cursor_that_is_not_ours_is_a_422_on_the_cursor_parameter(cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 422
    assert caught.value.errors == [{"loc": ["query", "cursor"], "msg": "The cursor is not valid."}]


def test_an_etag_is_the_quoted_id_and_version_the_openapi_pattern_describes() -> None:
    etag = make_etag(42, 7)
    assert etag == '"42-7"'
    assert re.fullmatch(ETAG_DOC["ETag"]["schema"]["pattern"], etag)


@pytest.mark.parametrize(
    ("header", "weak", "matches"),
    [
        ('"42-7"', False, True),
        ('"42-6"', False, False),
        ('"1-1", "42-7"', False, True),
        ('"1-1","42-7" ,"9-9"', False, True),
        ("*", False, True),
        ("*", True, True),
        ('"1-1", *', False, True),
        ("42-7", False, False),  # unquoted: not the same tag
        ("", False, False),
        ('W/"42-7"', True, True),  # If-None-Match compares weakly
        ('W/"42-7"', False, False),  # If-Match needs the strong tag
        ('"1-1", W/"42-7"', True, True),
        ('"42-70"', False, False),
    ],
)
def test_etag_matches(header: str, weak: bool, matches: bool) -> None:
    assert etag_matches(header, '"42-7"', weak=weak) is matches


def test_the_list_envelope_leaves_total_out_unless_counted() -> None:
    page = Page[int](data=[1, 2], next_cursor=None)
    assert orjson.loads(page.model_dump_json()) == {"data": [1, 2], "next_cursor": None}
    counted = Page[int](data=[], next_cursor="abc", total=0, total_exact=True)
    assert orjson.loads(counted.model_dump_json()) == {
        "data": [],
        "next_cursor": "abc",
        "total": 0,
        "total_exact": True,
    }


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("total", [None, 0, 7])
@pytest.mark.parametrize("next_cursor", [None, "WyJpZCIsIDFd"])
def test_page_response_writes_the_envelope_the_page_schema_describes(
    next_cursor: str | None, total: int | None, exact: bool
) -> None:
    rows = [{"id": 1, "name": 'Åsa \u2028 "quoted"'}, {"id": 2, "name": ""}]
    response = page_response(orjson.dumps(rows), next_cursor, total, exact=exact)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    described = Page[dict[str, Any]](
        data=rows,
        next_cursor=next_cursor,
        total=total,
        total_exact=None if total is None else exact,
    )
    assert orjson.loads(response.body) == orjson.loads(described.model_dump_json())
    assert ("total" in orjson.loads(response.body)) == (total is not None)
