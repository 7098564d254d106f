"""Authentication and scope checks as dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stockroom.auth.service import Authenticator, Principal
from stockroom.auth.tokens import TOKEN_PARAM, TOKEN_PREFIX, StreamTokens
from stockroom.errors import ForbiddenError, TooManyRequestsError, UnauthorizedError
from stockroom.ratelimit import STATE_KEY, RateLimiter

__all__ = [
    "ADMIN",
    "READ",
    "TOKEN_EXPIRES_STATE",
    "WRITE",
    "CurrentPrincipal",
    "RequireScope",
    "accepts_stream_token",
]

F = TypeVar("F", bound=Callable[..., Any])
_STREAM_TOKEN_MARK = "__stockroom_accepts_stream_token__"
# Where a request opened by a stream token keeps the token's expiry (Unix seconds).
TOKEN_EXPIRES_STATE = "stream_token_expires"
# Where the scope check leaves the caller, for CurrentPrincipal.
_PRINCIPAL_STATE = "principal"

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer sr_...` (see `stockroom apikey create`).",
)


async def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller, counted against its rate limit: by its API key, or on a route marked
    :func:`accepts_stream_token` by a stream token in ``?token=`` (which no other route
    accepts, nor ``Authorization``)."""
    authenticator: Authenticator = request.app.state.authenticator
    # The query string is parsed only when it may hold a token (most requests have none).
    token = request.query_params.get(TOKEN_PARAM) if request.scope["query_string"] else None
    if token is not None and authenticator.enabled:
        if not getattr(request.scope.get("endpoint"), _STREAM_TOKEN_MARK, False):
            raise UnauthorizedError(
                "A stream token (?token=) opens only GET /events; send the API key here "
                "as 'Authorization: Bearer <key>'."
            )
        tokens: StreamTokens = request.app.state.stream_tokens
        principal, expires = await tokens.verify(token)
        setattr(request.state, TOKEN_EXPIRES_STATE, expires)
        return await _count(request, principal)
    presented = credentials.credentials if credentials else None
    if presented is not None and presented.startswith(TOKEN_PREFIX) and authenticator.enabled:
        raise UnauthorizedError(
            "A stream token is not an API key: it opens only GET /events, as ?token=."
        )
    return await _count(request, await authenticator.authenticate(presented))


async def current_principal(request: Request) -> Principal:
    """The caller that the route's scope check (:class:`RequireScope`, which FastAPI runs
    first: a route's own dependencies come before its endpoint's parameters) let in."""
    principal = getattr(request.state, _PRINCIPAL_STATE, None)
    if not isinstance(principal, Principal):
        raise RuntimeError("CurrentPrincipal needs a scope check (READ, WRITE, ADMIN) first")
    return principal


def accepts_stream_token(endpoint: F) -> F:
    """Mark a route's endpoint as one that a stream token (``?token=``) may open."""
    setattr(endpoint, _STREAM_TOKEN_MARK, True)
    return endpoint


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def _count(request: Request, principal: Principal) -> Principal:
    """Counts the request against the caller's budget: its API key's, or with
    authentication off its client address's. Over budget: 429 with ``Retry-After``.
    The ``RateLimit-*`` headers are added to the response by ``RateLimitHeadersMiddleware``.
    Runs once per request however many scope checks a route has (FastAPI caches the
    principal); part of :func:`current_principal`, not a dependency of its own: each level
    of dependencies costs every request."""
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


class RequireScope:
    """A route dependency: the caller's key must grant ``scope`` (else 403). Every route
    that needs a key is also rate limited (when a limit is set)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        # Authentication, the rate limit and the scope in one dependency: each level of
        # dependencies costs every request (FastAPI solves them one by one).
        principal = getattr(request.state, _PRINCIPAL_STATE, None)
        if principal is None:  # once per request, however many scope checks a route has
            principal = await _authenticate(request, credentials)
            setattr(request.state, _PRINCIPAL_STATE, principal)
        if not principal.can(self.scope):
            raise ForbiddenError(f"This needs an API key with the {self.scope!r} scope.")
        return principal


READ = Depends(RequireScope("read"))
WRITE = Depends(RequireScope("write"))
ADMIN = Depends(RequireScope("admin"))
