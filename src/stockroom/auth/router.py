"""HTTP endpoints of API keys (``admin`` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from stockroom.auth import service
from stockroom.auth.deps import ADMIN, READ, CurrentPrincipal, ScopedRoute
from stockroom.auth.models import ApiKey
from stockroom.auth.schemas import (
    KEY_NAME_MAX_LENGTH,
    KEY_NAME_PATTERN,
    KeyCreate,
    KeyCreated,
    KeyPublic,
    StreamTokenCreated,
)
from stockroom.auth.tokens import StreamTokens
from stockroom.deps import SessionDep
from stockroom.http import Page
from stockroom.problems import problem_responses

__all__ = ["router", "stream_tokens_router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/keys",
    tags=["keys"],
    dependencies=[ADMIN],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)

KeyName = Annotated[
    str, Path(min_length=1, max_length=KEY_NAME_MAX_LENGTH, pattern=KEY_NAME_PATTERN)
]


def _public(record: ApiKey) -> KeyPublic:
    return KeyPublic(
        name=record.name,
        scopes=service.scopes_of(record),
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
    operation_id="createKey",
)
async def create_key(session: SessionDep, body: KeyCreate) -> KeyCreated:
    """A new key. Its secret is in this answer only; it is stored as a hash."""
    record, secret = await service.create_key(session, body.name, body.scopes)
    return KeyCreated(
        name=record.name,
        scopes=service.scopes_of(record),
        key=secret,
        created_at=record.created_at,
    )


@router.get("", operation_id="listKeys")
async def list_keys(session: SessionDep) -> Page[KeyPublic]:
    """Every key, revoked ones included; never the secrets."""
    return Page(data=[_public(r) for r in await service.list_keys(session)], next_cursor=None)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    operation_id="revokeKey",
)
async def revoke_key(session: SessionDep, request: Request, name: KeyName) -> None:
    """Revoke a key (again is fine). This instance refuses it at once; others within
    `STOCKROOM_AUTH_CACHE_SECONDS`."""
    await service.revoke_key(session, name)
    request.app.state.authenticator.forget(name)
    request.app.state.stream_tokens.forget(name)


# A credential for the event stream: an auth concern (the stream itself is the events
# package's), so it lives here, on a router of its own (no admin scope: read is enough).
stream_tokens_router = APIRouter(
    route_class=ScopedRoute,
    tags=["events"],
    responses=problem_responses(400, 401, 403, 422, 500, 503),
)


@stream_tokens_router.post(
    "/events/tokens",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(413),
    dependencies=[READ],
    operation_id="createStreamToken",
)
async def create_stream_token(request: Request, principal: CurrentPrincipal) -> StreamTokenCreated:
    """A short-lived credential for `GET /events?token=...`, for a browser's `EventSource`
    (which cannot send `Authorization`). It opens nothing else, expires after
    `STOCKROOM_EVENTS_TOKEN_SECONDS` and stops working when its API key is revoked."""
    tokens: StreamTokens = request.app.state.stream_tokens
    issued = await tokens.issue(principal, anonymous=not request.app.state.authenticator.enabled)
    return StreamTokenCreated(token=issued.token, expires_at=issued.expires_at)
