"""The ``Idempotency-Key`` header as a dependency of POST routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from starlette.responses import Response

from stockroom.auth.deps import CurrentPrincipal
from stockroom.db import begin_write
from stockroom.deps import SessionDep
from stockroom.idempotency.service import (
    InFlightKeys,
    Scope,
    StoredAnswer,
    request_hash,
    save,
    take,
)

__all__ = ["BeforeCommit", "IdempotencyDep", "IdempotentRequest", "answer_response"]

T = TypeVar("T")
BeforeCommit = Callable[[T], Awaitable[None]]
REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotentRequest:
    """Runs a write once per key: the first time it applies and stores its answer in the
    same transaction; a repeat gets the stored answer, byte for byte."""

    def __init__(self, session: Any, scope: Scope | None, in_flight: InFlightKeys) -> None:
        self._session = session
        self.scope = scope
        self.in_flight = in_flight

    async def execute(
        self,
        action: Callable[[BeforeCommit[T]], Awaitable[T]],
        render: Callable[[T], StoredAnswer],
    ) -> Response:
        """``action(before_commit)`` performs the write and calls ``before_commit(result)``
        inside its transaction; ``render`` turns the result into the answer."""
        scope = self.scope
        answer: StoredAnswer | None = None

        async def before_commit(result: T) -> None:
            nonlocal answer
            answer = render(result)
            if scope is not None:
                await save(self._session, scope, answer)

        with self.in_flight.hold(scope) if scope is not None else nullcontext():
            if scope is not None:
                await begin_write(self._session)
                stored = await take(self._session, scope)
                if stored is not None:
                    await self._session.rollback()
                    return answer_response(stored, replayed=True)
            await action(before_commit)
        assert answer is not None, "the action did not call before_commit"
        return answer_response(answer, replayed=False)


def answer_response(answer: StoredAnswer, *, replayed: bool) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return Response(content=answer.body, status_code=answer.status_code, headers=headers)


async def idempotent_request(
    request: Request,
    session: SessionDep,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=r"^[\x20-\x7E]{1,255}$",
            description="Makes a retry safe: the same key, path and body within 24 h get the "
            "first answer again (with `Idempotent-Replayed: true`) and apply nothing twice.",
        ),
    ] = None,
) -> IdempotentRequest:
    scope = None
    if idempotency_key is not None:
        scope = Scope(
            owner=principal.name,
            key=idempotency_key,
            method=request.method,
            path=request.url.path,
            request_hash=request_hash(await request.body()),
        )
    return IdempotentRequest(session, scope, request.app.state.in_flight_keys)


IdempotencyDep = Annotated[IdempotentRequest, Depends(idempotent_request)]
