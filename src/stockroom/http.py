"""HTTP helpers shared by the routers: entity tags, opaque cursors and the list envelope."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.responses import Response

from stockroom.errors import InvalidRequestError

__all__ = [
    "ETAG_DOC",
    "LOCATION_DOC",
    "REPLAYED_DOC",
    "Cursor",
    "Limit",
    "Page",
    "cursor_int",
    "decode_cursor",
    "encode_cursor",
    "etag_matches",
    "make_etag",
    "page_response",
]

T = TypeVar("T")

# The largest integer a cursor may carry: a signed 64-bit column's (PostgreSQL's bigint,
# SQLite's INTEGER). A larger one would reach the driver, which refuses it: a 500, not a 422.
MAX_CURSOR_INT = 2**63 - 1

# The query parameters every list takes.
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None, Query(max_length=2048, description="`next_cursor` of the previous page.")
]

# Response headers' documentation, as OpenAPI `headers` of the responses that carry them.
ETAG_DOC: dict[str, Any] = {
    "ETag": {
        "description": 'The item\'s entity tag, `"<id>-<version>"`: send it in `If-Match` or '
        "`If-None-Match`.",
        "schema": {"type": "string", "pattern": r'^"\d+-\d+"$'},
    }
}
LOCATION_DOC: dict[str, Any] = {
    "Location": {
        "description": "Path of the created resource.",
        "schema": {"type": "string", "format": "uri-reference"},
    }
}
REPLAYED_DOC: dict[str, Any] = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same `Idempotency-Key` (nothing was applied again); absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def page_response(
    data: bytes, next_cursor: str | None, total: int | None = None, *, exact: bool = True
) -> Response:
    """The list envelope of every list (the wire form of :class:`Page`), written once: ``data``
    is the page's rows as a JSON array, already serialised (by the serializer each domain
    builds once at import); nothing is validated or encoded a second time."""
    tail = (
        b""
        if total is None
        else b',"total":%d,"total_exact":%s'
        % (
            total,
            b"true" if exact else b"false",
        )
    )
    return Response(
        b'{"data":%s,"next_cursor":%s%s}' % (data, orjson.dumps(next_cursor), tail),
        media_type="application/json",
    )


def make_etag(resource_id: int, version: int) -> str:
    return f'"{resource_id}-{version}"'


def etag_matches(header: str, current: str, *, weak: bool) -> bool:
    """Whether an ``If-Match`` (strong) or ``If-None-Match`` (weak) header matches ``current``.

    The header may be ``*`` or a comma-separated list of entity tags (RFC 9110 §13.1).
    """
    candidates = [part.strip() for part in header.split(",")]
    if "*" in candidates:
        return True
    if weak:
        candidates = [tag.removeprefix("W/") for tag in candidates]
    return current in candidates


def encode_cursor(payload: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """Decode a cursor made by :func:`encode_cursor`; anything else is a 422."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        payload = None
    if not isinstance(payload, list):
        raise InvalidRequestError("The cursor is not valid.", loc=("query", "cursor"))
    return payload


def invalid_cursor() -> InvalidRequestError:
    return InvalidRequestError(
        "The cursor is not valid for this list and sort order.", loc=("query", "cursor")
    )


def cursor_int(value: Any, *, maximum: int = MAX_CURSOR_INT) -> int:
    """``value`` if it is a JSON integer from 0 to ``maximum`` (what the column it is
    compared with holds), else the cursor is not one of ours: a 422."""
    if type(value) is not int or not 0 <= value <= maximum:
        raise invalid_cursor()
    return value


def _absent(value: object) -> bool:
    return value is None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not null


class Page(BaseModel, Generic[T]):
    """The common list envelope: ``{"data": [...], "next_cursor": ...}`` (+ ``total``)."""

    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
    # Left out of the answer, not null, unless counted; so not nullable in the schema.
    total: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = Field(
        None,
        exclude_if=_absent,
        json_schema_extra=_no_default,
        description="Number of matches; present only when `count=true` or `count=exact` was asked.",
    )
    total_exact: bool | SkipJsonSchema[None] = Field(
        None,
        exclude_if=_absent,
        json_schema_extra=_no_default,
        description="With `total`: false when `total` is an estimate (`count=true` on a "
        "large catalogue where more than 1,000 items match), true when it is exact.",
    )
