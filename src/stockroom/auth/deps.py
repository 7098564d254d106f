"""Authentication and scope checks as dependencies."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import Depends, Request, Response, params
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from stockroom.auth.service import Principal
from stockroom.auth.tokens import (
    EXPORT_TOKEN,
    STREAM_TOKEN,
    TOKEN_KINDS,
    TOKEN_PARAM,
    SignedTokens,
    TokenKind,
)
from stockroom.errors import ForbiddenError, TooManyRequestsError, UnauthorizedError
from stockroom.ratelimit import STATE_KEY, RateLimiter
from stockroom.resources import resources_of

__all__ = [
    "ADMIN",
    "READ",
    "TOKEN_EXPIRES_STATE",
    "WRITE",
    "RequireScope",
    "ScopedRoute",
    "accepts_export_token",
    "accepts_stream_token",
    "principal_of",
    "security_schemes",
]

F = TypeVar("F", bound=Callable[..., Any])
# The kind of token (auth.tokens.TokenKind) a route's endpoint accepts in ?token=.
_TOKEN_MARK = "__stockroom_accepts_token__"
# Where a request opened by a token keeps the token's expiry (Unix seconds).
TOKEN_EXPIRES_STATE = "stream_token_expires"
# Where the scope check leaves the caller, for principal_of.
_PRINCIPAL_STATE = "principal"

_BEARER_DESCRIPTION = "An API key: `Authorization: Bearer sr_...` (see `stockroom apikey create`)."


def _bearer_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, as ``HTTPBearer`` reads it (the scheme in
    any case, the key stripped), or None; without building a credentials model."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
            if scheme.lower() != "bearer" or not credentials:
                return None
            return credentials
    return None


def _kind_of(token: str) -> TokenKind | None:
    """The kind of token its prefix names (a guess: verifying decides)."""
    return next((kind for kind in TOKEN_KINDS if token.startswith(kind.prefix)), None)


def _article(kind: TokenKind) -> str:
    return "An" if kind.name[0] in "aeiou" else "A"


async def _authenticate(request: Request) -> Principal:
    """The caller, counted against its rate limit: by its API key, or on a route marked
    :func:`accepts_stream_token` (:func:`accepts_export_token`) by a token of that kind in
    ``?token=`` (which no other route accepts, nor ``Authorization``)."""
    resources = resources_of(request)
    authenticator = resources.authenticator
    # The query string is parsed only when it may hold a token (most requests have none).
    token = request.query_params.get(TOKEN_PARAM) if request.scope["query_string"] else None
    if token is not None and authenticator.enabled:
        accepted: TokenKind | None = getattr(request.scope.get("endpoint"), _TOKEN_MARK, None)
        given = _kind_of(token) or accepted or STREAM_TOKEN
        if given != accepted:
            raise UnauthorizedError(
                f"{_article(given)} {given.name} token (?token=) opens only {given.opens}; "
                "send the API key here as 'Authorization: Bearer <key>'."
            )
        tokens: SignedTokens = (
            resources.stream_tokens if accepted == STREAM_TOKEN else resources.export_tokens
        )
        principal, expires = await tokens.verify(token)
        setattr(request.state, TOKEN_EXPIRES_STATE, expires)
        return await _count(request, principal)
    presented = _bearer_key(request)
    kind = _kind_of(presented) if presented is not None else None
    if kind is not None and authenticator.enabled:
        raise UnauthorizedError(
            f"{_article(kind)} {kind.name} token is not an API key: it opens only "
            f"{kind.opens}, as ?token=."
        )
    return await _count(request, await authenticator.authenticate(presented))


def principal_of(request: Request) -> Principal:
    """The caller that the route's scope check (:class:`RequireScope`: before the handler on
    a :class:`ScopedRoute`, and as a dependency FastAPI runs before the endpoint's
    parameters otherwise) let in. A plain function for other dependencies to call: one
    dependency depending on another costs every request a level of FastAPI's solving."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL_STATE)
    if not isinstance(principal, Principal):
        raise RuntimeError("principal_of needs a scope check (READ, WRITE, ADMIN) first")
    return principal


def accepts_stream_token(endpoint: F) -> F:
    """Mark a route's endpoint as one that a stream token (``?token=``) may open."""
    setattr(endpoint, _TOKEN_MARK, STREAM_TOKEN)
    return endpoint


def accepts_export_token(endpoint: F) -> F:
    """Mark a route's endpoint as one that an export token (``?token=``) may open."""
    setattr(endpoint, _TOKEN_MARK, EXPORT_TOKEN)
    return endpoint


async def _count(request: Request, principal: Principal) -> Principal:
    """Counts the request against the caller's budget: its API key's, or with
    authentication off its client address's. Over budget: 429 with ``Retry-After``.
    The ``RateLimit-*`` headers are added to the response by ``RateLimitHeadersMiddleware``.
    Runs once per request however many scope checks a route has (the principal is kept
    in the request's state); part of the scope check, not a dependency of its own: each
    level of dependencies costs every request."""
    limiter = resources_of(request).rate_limiter
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


class RequireScope(HTTPBearer):
    """A route dependency: the caller's key must grant ``scope`` (else 403). Every route
    that needs a key is also rate limited (when a limit is set).

    It is FastAPI's ``HTTPBearer`` itself (so the OpenAPI document declares the scheme, one
    ``HTTPBearer`` for every scope), not a dependency on it: each dependency FastAPI solves
    costs every request (docs/async.md has the measurement)."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False, scheme_name="HTTPBearer", description=_BEARER_DESCRIPTION
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        # Authentication, the rate limit and the scope in one dependency. The principal is
        # kept in the request's state (the dict under request.state), once per request.
        state: dict[str, Any] = request.scope.setdefault("state", {})
        principal: Principal | None = state.get(_PRINCIPAL_STATE)
        if principal is None:
            principal = state[_PRINCIPAL_STATE] = await _authenticate(request)
        if not principal.can(self.scope):
            raise ForbiddenError(f"This needs an API key with the {self.scope!r} scope.")
        return principal


class ScopedRoute(APIRoute):
    """A route whose scope check (``dependencies=[READ]``, on the route or its router) runs
    before FastAPI's request handler, instead of as a dependency FastAPI solves.

    Same check, same order (authentication, rate limit, scope; before the body is read or
    any parameter validated), same OpenAPI document (the route's ``security``); but a
    dependency FastAPI solves costs every request more than the check itself (cache keys,
    parameter extraction, scope bookkeeping; the measurement is in docs/async.md). A router
    opts in with ``route_class=ScopedRoute``; on a router that does not, ``READ`` and its
    kin work as plain dependencies, as does a scope check on a parameter
    (``principal: Annotated[Principal, READ]``)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        dependencies: Sequence[params.Depends] | None = None,
        openapi_extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        checks = [
            d.dependency for d in dependencies or () if isinstance(d.dependency, RequireScope)
        ]
        kept = [d for d in dependencies or () if not isinstance(d.dependency, RequireScope)]
        if len(checks) > 1:
            raise ValueError(f"{path}: one scope check a route, not {len(checks)}")
        self.scope_check = checks[0] if checks else None
        if self.scope_check is not None:
            security: list[dict[str, list[str]]] = [{self.scope_check.scheme_name: []}]
            openapi_extra = {"security": security, **(openapi_extra or {})}
        super().__init__(path, endpoint, dependencies=kept, openapi_extra=openapi_extra, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        check = self.scope_check
        if check is None:
            return handler

        async def checked(request: Request) -> Response:
            await check(request)
            return await handler(request)

        return checked


def security_schemes() -> dict[str, Any]:
    """The document's ``components/securitySchemes``: the one scheme every scope check
    declares (FastAPI writes it only for the checks it solves itself)."""
    check = RequireScope("read")
    return {
        check.scheme_name: check.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    }


READ = Depends(RequireScope("read"))
WRITE = Depends(RequireScope("write"))
ADMIN = Depends(RequireScope("admin"))
