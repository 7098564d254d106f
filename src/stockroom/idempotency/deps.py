"""The ``Idempotency-Key`` header as a dependency of POST routes: a :class:`UnitOfWork`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Request
from starlette.responses import Response

from stockroom.auth.deps import principal_of
from stockroom.idempotency.service import Scope, StoredAnswer, UnitOfWork, request_hash

__all__ = ["REPLAYED_HEADER", "IdempotencyKey", "answer_response", "idempotent", "unit_of_work"]

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


def scope_for(request: Request, owner: str, key: str | None) -> Scope | None:
    """The key's scope for a request whose JSON body has been read by FastAPI already."""
    if key is None:
        return None

    async def body_hash() -> str:
        return request_hash(await request.body())

    return Scope(owner, key, request.method, request.url.path, body_hash)


def unit_of_work(request: Request, scope: Scope | None) -> UnitOfWork:
    state = request.app.state
    return UnitOfWork(state.stores.database, state.stores.keys, state.in_flight_keys, scope)


def idempotent(request: Request, idempotency_key: str | None) -> UnitOfWork:
    """The request's unit of work, keyed by its caller (whom the route's scope check let
    in) and its ``Idempotency-Key`` (the route's own header parameter), if it sent one.

    A plain call in the endpoint, not a dependency: each dependency FastAPI solves costs
    every request a level of its solving (with the writer's, about a twentieth of a
    POST /items' CPU, in-process, py-spy)."""
    owner = principal_of(request).name
    return unit_of_work(request, scope_for(request, owner, idempotency_key))
