"""The ``Idempotency-Key`` header as a dependency of POST routes: a :class:`UnitOfWork`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request
from starlette.responses import Response

from stockroom.auth.deps import principal_of
from stockroom.idempotency.service import Scope, StoredAnswer, UnitOfWork, request_hash
from stockroom.resources import resources_of

__all__ = ["REPLAYED_HEADER", "IdempotencyKey", "answer_response", "idempotent"]

REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[\x20-\x7E]{1,255}$",
        description="Makes a retry safe: the same key, path and body within 24 h get the "
        "first answer again (with `Idempotent-Replayed: true`) and apply nothing twice.",
    ),
]


def answer_response(answer: StoredAnswer, *, replayed: bool) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return Response(content=answer.body, status_code=answer.status_code, headers=headers)


BodyHash = Callable[[], Awaitable[str]]


def scope_for(
    request: Request, owner: str, key: str | None, body_hash: BodyHash | None = None
) -> Scope | None:
    """The key's scope: ``body_hash`` tells one request's body from another's (by default
    the hash of a JSON body that FastAPI has read already)."""
    if key is None:
        return None

    async def json_body_hash() -> str:
        return request_hash(await request.body())

    return Scope(owner, key, request.method, request.url.path, body_hash or json_body_hash)


def idempotent(
    request: Request, idempotency_key: str | None, *, body_hash: BodyHash | None = None
) -> UnitOfWork[Any]:
    """The request's unit of work, keyed by its caller (whom the route's scope check let
    in) and its ``Idempotency-Key`` (the route's own header parameter), if it sent one.

    A plain call in the endpoint, not a dependency: each dependency FastAPI solves costs
    every request a level of its solving (see docs/async.md)."""
    owner = principal_of(request).name
    resources = resources_of(request)
    stores = resources.stores
    return UnitOfWork(
        stores.database,
        stores.keys,
        resources.in_flight_keys,
        scope_for(request, owner, idempotency_key, body_hash),
    )
