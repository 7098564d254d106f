"""HTTP helpers shared by the routers: entity tags, opaque cursors and the list envelope."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel, Field, SerializationInfo, model_serializer
from starlette.responses import Response

from stockroom.errors import InvalidRequestError

__all__ = [
    "Cursor",
    "Limit",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "etag_matches",
    "json_response",
    "make_etag",
]

T = TypeVar("T")

# The query parameters every list takes.
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None, Query(max_length=2048, description="`next_cursor` of the previous page.")
]


def json_response(
    body: BaseModel, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``body`` as JSON, serialised once by pydantic. A route returning this still declares
    its ``response_model`` (the schema), but FastAPI neither validates the model again nor
    encodes it a second time."""
    return Response(
        body.__pydantic_serializer__.to_json(body),
        status_code=status_code,
        headers=headers,
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


class Page(BaseModel, Generic[T]):
    """The common list envelope: ``{"data": [...], "next_cursor": ...}`` (+ ``total``)."""

    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
    total: int | None = Field(
        None, description="Number of matches; present only when `count=true` was asked."
    )

    @model_serializer(mode="wrap")
    def _drop_absent_total(self, handler: Any, _info: SerializationInfo) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        if body.get("total") is None:
            body.pop("total", None)
        return body
