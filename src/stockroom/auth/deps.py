"""Authentication and scope checks as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stockroom.auth.service import Authenticator, Principal
from stockroom.errors import ForbiddenError

__all__ = ["ADMIN", "READ", "WRITE", "CurrentPrincipal", "RequireScope"]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer sr_...` (see `stockroom apikey create`).",
)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(credentials.credentials if credentials else None)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


class RequireScope:
    """A route dependency: the caller's key must grant ``scope`` (else 403)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, principal: CurrentPrincipal) -> Principal:
        if not principal.can(self.scope):
            raise ForbiddenError(f"This needs an API key with the {self.scope!r} scope.")
        return principal


READ = Depends(RequireScope("read"))
WRITE = Depends(RequireScope("write"))
ADMIN = Depends(RequireScope("admin"))
