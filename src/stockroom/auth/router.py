"""HTTP endpoints of API keys (``admin`` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from stockroom.auth import service
from stockroom.auth.deps import ADMIN
from stockroom.auth.models import ApiKey
from stockroom.auth.schemas import KeyCreate, KeyCreated, KeyPublic
from stockroom.deps import SessionDep
from stockroom.http import Page
from stockroom.problems import problem_responses

__all__ = ["router"]

router = APIRouter(
    prefix="/keys",
    tags=["keys"],
    dependencies=[ADMIN],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)

KeyName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


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
