"""Authentication and scope checks as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stockroom.auth.service import Authenticator, Principal
from stockroom.errors import ForbiddenError, TooManyRequestsError
from stockroom.ratelimit import STATE_KEY, RateLimiter

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


async def rate_limited(request: Request, principal: CurrentPrincipal) -> Principal:
    """Counts the request against the caller's budget: its API key's, or with
    authentication off its client address's. Over budget: 429 with ``Retry-After``.
    The ``RateLimit-*`` headers are added to the response by ``RateLimitHeadersMiddleware``.
    Runs once per request however many scope checks a route has (FastAPI caches it)."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return principal
    if principal.name:
        identity = f"key:{principal.name}"
    else:
        identity = f"address:{request.client.host if request.client else 'unknown'}"
    quota = await limiter.hit(identity)
    if quota is None:  # the store did not answer: let the request through
        return principal
    setattr(request.state, STATE_KEY, quota)
    if not quota.allowed:
        raise TooManyRequestsError(
            f"Rate limit of {limiter.item.amount} requests per {_window(limiter)} exceeded; "
            f"retry in {quota.reset_seconds} s.",
            headers={"Retry-After": str(quota.reset_seconds)},
        )
    return principal


def _window(limiter: RateLimiter) -> str:
    item = limiter.item
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


LimitedPrincipal = Annotated[Principal, Depends(rate_limited)]


class RequireScope:
    """A route dependency: the caller's key must grant ``scope`` (else 403). Every route
    that needs a key is also rate limited (when a limit is set)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, principal: LimitedPrincipal) -> Principal:
        if not principal.can(self.scope):
            raise ForbiddenError(f"This needs an API key with the {self.scope!r} scope.")
        return principal


READ = Depends(RequireScope("read"))
WRITE = Depends(RequireScope("write"))
ADMIN = Depends(RequireScope("admin"))
