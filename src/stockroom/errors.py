"""Domain errors and the one place that turns any error into ``application/problem+json``.

The tree::

    StockroomError                 base; carries the problem type, title and HTTP status
    ├── UnauthorizedError          401  unauthorized (with WWW-Authenticate: Bearer)
    ├── ForbiddenError             403  forbidden (the key lacks a scope)
    ├── NotFoundError              404  not-found
    ├── ConflictError              409  conflict
    │   └── DuplicateError         409  duplicate (a unique value is taken)
    ├── PreconditionFailedError    412  precondition-failed (If-Match)
    ├── UnsupportedMediaTypeError  415  unsupported-media-type
    ├── InvalidRequestError        422  invalid-request (a rule beyond the schema)
    ├── TooManyRequestsError       429  too-many-requests (rate limit; with Retry-After)
    └── UnavailableError           503  service-unavailable (database down, pool exhausted)

Services raise these; they know nothing of HTTP. ``install_error_handlers`` maps them, and
the framework's own errors, to problem documents (RFC 9457) at the edge. No problem ever
carries a traceback, SQL or a driver's message: those go to the log only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ConflictError",
    "DuplicateError",
    "ForbiddenError",
    "InvalidRequestError",
    "NotFoundError",
    "PreconditionFailedError",
    "StockroomError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "install_error_handlers",
    "problem_response",
    "problem_responses",
    "unavailable_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"

log = structlog.get_logger("stockroom.errors")


class StockroomError(Exception):
    """Base of every error a service raises on purpose."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        # Extra members of the problem document (RFC 9457 §3.2), e.g. ``available``.
        self.extra = extra


class NotFoundError(StockroomError):
    status, slug, title = 404, "not-found", "Not found"


class ConflictError(StockroomError):
    status, slug, title = 409, "conflict", "Conflict"


class DuplicateError(ConflictError):
    slug, title = "duplicate", "Already exists"


class PreconditionFailedError(StockroomError):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class UnsupportedMediaTypeError(StockroomError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidRequestError(StockroomError):
    status, slug, title = 422, "invalid-request", "Invalid request"

    def __init__(self, detail: str, *, loc: Sequence[str | int] = ()) -> None:
        super().__init__(detail)
        self.errors: list[dict[str, Any]] = [{"loc": list(loc), "msg": detail}]


class UnauthorizedError(StockroomError):
    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(StockroomError):
    status, slug, title = 403, "forbidden", "Forbidden"


class TooManyRequestsError(StockroomError):
    status, slug, title = 429, "too-many-requests", "Too many requests"


class UnavailableError(StockroomError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# Statuses the framework raises itself (routing, body limits) and the slug each gets.
_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "too-many-requests",
}


_PROBLEM_PROPERTIES: dict[str, Any] = {
    "type": {"type": "string", "description": "URI reference naming the kind of problem."},
    "title": {"type": "string"},
    "status": {"type": "integer"},
    "detail": {"type": "string", "description": "What went wrong, for a human."},
}
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": _PROBLEM_PROPERTIES,
}
_VALIDATION_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "errors"],
    "properties": {
        **_PROBLEM_PROPERTIES,
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
_DESCRIPTIONS = {
    400: "The body could not be decoded.",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the scope this needs.",
    404: "No such resource.",
    409: "Conflict with the current state.",
    410: "The cursor names an event that is no longer kept (or never was); start again "
    "without one.",
    412: "`If-Match` does not match the current ETag.",
    413: "The request body is too large.",
    415: "The body's Content-Type is not one this accepts.",
    422: "The request is invalid; `errors` lists each problem.",
    429: "The API key (or, with authentication off, the client address) has used up its "
    "rate limit; retry after `Retry-After` seconds.",
    500: "Unexpected error (logged with the request id).",
    503: "The database is unavailable or busy; retry shortly.",
}


_INTEGER_HEADER: dict[str, Any] = {"schema": {"type": "integer", "minimum": 0}}
_RATE_LIMIT_HEADERS: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying.", **_INTEGER_HEADER},
    "RateLimit-Limit": {"description": "Requests allowed per window.", **_INTEGER_HEADER},
    "RateLimit-Remaining": {"description": "Requests left in the window.", **_INTEGER_HEADER},
    "RateLimit-Reset": {"description": "Seconds until the budget grows.", **_INTEGER_HEADER},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting problem+json answers with these statuses.

    A route that needs an API key (401) may also be rate limited, so 429 comes with it.
    """
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {
                PROBLEM_CONTENT_TYPE: {
                    "schema": _VALIDATION_PROBLEM_SCHEMA if status == 422 else _PROBLEM_SCHEMA
                }
            },
        }
        if status == 429:
            response["headers"] = _RATE_LIMIT_HEADERS
        responses[status] = response
    return responses


def problem_response(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def internal_error_response() -> Response:
    return problem_response(
        500, "internal-error", "An unexpected error occurred; it has been logged."
    )


def unavailable_response(
    detail: str = "The database is unavailable or busy; retry shortly.",
) -> Response:
    return problem_response(503, UnavailableError.slug, detail, headers={"Retry-After": "1"})


async def _on_stockroom_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StockroomError)
    extra = dict(exc.extra)
    if isinstance(exc, InvalidRequestError):
        extra["errors"] = exc.errors
    return problem_response(
        exc.status, exc.slug, exc.detail, title=exc.title, headers=exc.headers, **extra
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = "No such resource."
    if exc.status_code == 405:
        detail = "This resource does not support that method."
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(exc.status_code, slug, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (the router's 405 names only one route's)."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")  # answered for every GET route (stockroom.edge.HeadMiddleware)
    return [method for method in _METHODS if method in allowed]


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_validation_item(error) for error in exc.errors()]
    return problem_response(
        422,
        "invalid-request",
        _summary(errors),
        title="Invalid request",
        errors=errors,
    )


def _validation_item(error: Any) -> dict[str, Any]:
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    if error.get("type") == "json_invalid":
        return {"loc": loc[:1], "msg": "The body is not valid JSON."}
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return {"loc": loc, "msg": msg}


def _summary(errors: list[dict[str, Any]]) -> str:
    shown = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(shown) + more if shown else "The request is invalid."


async def _on_database_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", error=type(exc).__name__)
    return unavailable_response()


# SQLSTATEs that mean "try again later": a statement cancelled by statement_timeout (57014),
# too many connections (53300), a server shutting down or starting (57P01-57P03), and every
# connection exception (class 08).
_TRANSIENT_SQLSTATES = ("57014", "53300", "57P01", "57P02", "57P03", "08")


async def _on_database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, sa_exc.DBAPIError)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
        log.warning("database unavailable", error=type(exc).__name__, sqlstate=sqlstate)
        return unavailable_response()
    raise exc  # anything else is a bug: the request-context middleware answers 500


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json renderers once. Unexpected exceptions are rendered by the
    request-context middleware, so that they too carry the request id."""
    app.add_exception_handler(StockroomError, _on_stockroom_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(sa_exc.DBAPIError, _on_database_error)
    # The pool could not hand out a connection in time, the server refused or dropped the
    # connection, or a statement ran past its timeout: the request may succeed later.
    for exc_type in (
        sa_exc.TimeoutError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        ConnectionError,
        asyncio.TimeoutError,
    ):
        app.add_exception_handler(exc_type, _on_database_unavailable)
