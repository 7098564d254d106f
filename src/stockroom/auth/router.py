"""HTTP endpoints of API keys (``admin`` scope)."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Path, Request, status
from pydantic import TypeAdapter
from starlette.responses import Response

from stockroom.auth import service
from stockroom.auth.deps import ADMIN, READ, ScopedRoute, principal_of
from stockroom.auth.models import ApiKey
from stockroom.auth.schemas import (
    KEY_NAME_MAX_LENGTH,
    KEY_NAME_PATTERN,
    CurrentKey,
    KeyCreate,
    KeyCreated,
    KeyPublic,
    ScopeName,
    StreamTokenCreated,
)
from stockroom.http import Page, page_response
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["current_key_router", "router", "stream_tokens_router"]

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


_KEYS = TypeAdapter(list[KeyPublic])


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
async def create_key(request: Request, body: KeyCreate) -> KeyCreated:
    """A new key. Its secret is in this answer only; it is stored as a hash."""
    async with resources_of(request).sessions() as session:
        record, secret = await service.create_key(session, body.name, body.scopes)
    return KeyCreated(
        name=record.name,
        scopes=service.scopes_of(record),
        key=secret,
        created_at=record.created_at,
    )


@router.get("", response_model=Page[KeyPublic], operation_id="listKeys")
async def list_keys(request: Request) -> Response:
    """Every key, revoked ones included; never the secrets."""
    async with resources_of(request).sessions() as session:
        keys = await service.list_keys(session)
    return page_response(_KEYS.dump_json([_public(r) for r in keys]), next_cursor=None)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    operation_id="revokeKey",
)
async def revoke_key(request: Request, name: KeyName) -> None:
    """Revoke a key (again is fine). This instance refuses it at once; others within
    `STOCKROOM_AUTH_CACHE_SECONDS`."""
    resources = resources_of(request)
    async with resources.sessions() as session:
        await service.revoke_key(session, name)
    resources.authenticator.forget(name)
    resources.stream_tokens.forget(name)


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
async def create_stream_token(request: Request) -> StreamTokenCreated:
    """A short-lived credential for `GET /events?token=...`, for a browser's `EventSource`
    (which cannot send `Authorization`). It opens nothing else, expires after
    `STOCKROOM_EVENTS_TOKEN_SECONDS` and stops working when its API key is revoked."""
    resources = resources_of(request)
    issued = await resources.stream_tokens.issue(
        principal_of(request), anonymous=not resources.authenticator.enabled
    )
    return StreamTokenCreated(token=issued.token, expires_at=issued.expires_at)


# Who is calling: any valid key (read scope), so that a client such as the console shows
# what the key may do without probing the endpoints it may not call.
current_key_router = APIRouter(
    route_class=ScopedRoute,
    tags=["keys"],
    responses=problem_responses(400, 401, 403, 500, 503),
)


@current_key_router.get("/me", dependencies=[READ], operation_id="getCurrentKey")
async def get_current_key(request: Request) -> CurrentKey:
    """The API key of this request: its name and every scope it grants (implied ones
    included). With authentication off the name is null and every scope is granted."""
    principal = principal_of(request)
    name = principal.name if resources_of(request).authenticator.enabled else None
    return CurrentKey(name=name, scopes=[s for s in get_args(ScopeName) if principal.can(s)])
