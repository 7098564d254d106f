"""The one place that turns any error into ``application/problem+json`` (RFC 9457).

- :func:`install_error_handlers` maps the domain errors (:mod:`stockroom.errors`), the
  framework's own errors and the database's to problem documents;
- :func:`problem_response` and friends render one (the middleware uses them too);
- :func:`problem_responses` and :data:`PROBLEM_SCHEMAS` are the OpenAPI side: every error
  response refers to the one ``Problem`` (or, for 422, ``ValidationProblem``) component.

No problem ever carries a traceback, SQL or a driver's message: those go to the log only.

Which database errors are a 503 (retry shortly) and which a 500 (a bug or a broken
deployment, which no retry mends) is decided by :func:`is_unavailable`.
"""

from __future__ import annotations

import sqlite3
import traceback
from http import HTTPStatus
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from stockroom.database.failures import failed_to_connect
from stockroom.errors import InvalidRequestError, StockroomError, UnavailableError

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_SCHEMAS",
    "RETRY_AFTER_HEADER",
    "install_error_handlers",
    "internal_error_response",
    "is_unavailable",
    "problem_response",
    "problem_responses",
    "unavailable_response",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"

log = structlog.get_logger("stockroom.errors")

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


# --- OpenAPI -------------------------------------------------------------------------------

_PROBLEM_PROPERTIES: dict[str, Any] = {
    "type": {
        "type": "string",
        "format": "uri-reference",
        "description": "URI reference naming the kind of problem, e.g. `/problems/not-found`.",
    },
    "title": {"type": "string", "description": "Short summary of the kind of problem."},
    "status": {"type": "integer", "minimum": 100, "maximum": 599},
    "detail": {"type": "string", "description": "What went wrong, for a human."},
    "available": {
        "type": "integer",
        "description": "Only in `insufficient-stock`: the quantity that was in stock.",
    },
}
PROBLEM_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "title": "Problem",
        "type": "object",
        "description": "An RFC 9457 problem document (`application/problem+json`).",
        "required": ["type", "title", "status", "detail"],
        "properties": _PROBLEM_PROPERTIES,
    },
    "ValidationProblem": {
        "title": "ValidationProblem",
        "type": "object",
        "description": "A 422 problem: `errors` lists each invalid part of the request.",
        "required": ["type", "title", "status", "detail", "errors"],
        "properties": {
            **_PROBLEM_PROPERTIES,
            "errors": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationProblemItem"},
            },
        },
    },
    "ValidationProblemItem": {
        "title": "ValidationProblemItem",
        "type": "object",
        "required": ["loc", "msg"],
        "properties": {
            "loc": {
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": 'Where: e.g. `["body", "price"]` or `["query", "cursor"]`.',
            },
            "msg": {"type": "string"},
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
    503: "The database is unavailable or busy; retry after `Retry-After` seconds.",
}
RETRY_AFTER_HEADER: dict[str, Any] = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting problem+json answers with these statuses.

    A route that needs an API key (401) may also be rate limited, so 429 comes with it.
    """
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        name = "ValidationProblem" if status == 422 else "Problem"
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
        if status in (429, 503):
            response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        responses[status] = response
    return responses


# --- Rendering -----------------------------------------------------------------------------


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
    return problem_response(
        503, UnavailableError.slug, detail, title=UnavailableError.title, headers=_RETRY_SOON
    )


_RETRY_SOON = {"Retry-After": "1"}


# --- Handlers ------------------------------------------------------------------------------


async def _on_stockroom_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StockroomError)
    extra = dict(exc.extra)
    if isinstance(exc, InvalidRequestError):
        extra["errors"] = exc.errors
    headers = exc.headers
    if exc.status == 503 and "Retry-After" not in headers:
        headers = {**_RETRY_SOON, **headers}
    return problem_response(
        exc.status, exc.slug, exc.detail, title=exc.title, headers=headers, **extra
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


# --- Which database errors a retry can mend --------------------------------------------------

# PostgreSQL SQLSTATEs that mean "try again later": every connection exception (class 08),
# too many connections (53300), a server shutting down, crashing or starting (57P01-57P03),
# and a statement cancelled by statement_timeout (57014).
_TRANSIENT_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03", "57014")
# SQLite: another writer held the lock past busy_timeout.
_SQLITE_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "unavailable or busy, retry shortly" (503).

    Yes for: the pool handing out no connection in time; a connection that could not be
    made or was lost (SQLSTATE class 08 and 57P01-57P03, 53300, a refused or reset socket,
    an invalidated connection); a statement timeout (57014, or the driver's own command
    timeout); SQLite busy past its busy_timeout. Anything else (a missing table, a
    constraint nobody expected, a syntax error) is a bug or a broken deployment: a 500.
    """
    if isinstance(exc, sa_exc.TimeoutError):  # the pool's timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy saw a disconnect
            return True
        driver_error: BaseException | None = exc.orig
    elif failed_to_connect(exc) or _raised_by_driver(exc):
        # Not wrapped by SQLAlchemy: what fails while the pool opens a connection
        # (ConnectionRefusedError, a TimeoutError of the handshake, ...: marked as such where
        # they are raised, see database/failures.py) and asyncpg's own command
        # timeout (TimeoutError, known by the driver's frames in its traceback). The same
        # errors from anything else: a 500.
        driver_error = exc
    else:
        return False
    sqlstate = getattr(driver_error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    if isinstance(driver_error, sqlite3.Error):
        return getattr(driver_error, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES
    # asyncpg's socket errors reach SQLAlchemy's adapter as the cause of its own error.
    cause = driver_error.__cause__ if driver_error is not None else None
    return isinstance(driver_error, OSError | TimeoutError) or isinstance(
        cause, OSError | TimeoutError
    )


_DRIVER_MODULES = ("asyncpg.", "aiosqlite.", "sqlalchemy.")


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether the traceback leads into the database driver (or SQLAlchemy's pool)."""
    return any(
        str(frame.f_globals.get("__name__", "")).startswith(_DRIVER_MODULES)
        for frame, _line in traceback.walk_tb(exc.__traceback__)
    )


async def _on_database_error(_request: Request, exc: Exception) -> Response:
    if is_unavailable(exc):
        orig = getattr(exc, "orig", None)
        log.warning(
            "database unavailable",
            error=type(exc).__name__,
            driver_error=type(orig).__name__ if orig is not None else None,
            sqlstate=getattr(orig, "sqlstate", None),
        )
        return unavailable_response()
    raise exc  # anything else is a bug: the request-context middleware logs it and answers 500


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json renderers once. Unexpected exceptions are rendered by the
    request-context middleware, so that they too carry the request id."""
    app.add_exception_handler(StockroomError, _on_stockroom_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    # Every SQLAlchemy error: DBAPIError (what the driver raised, wrapped) and the pool's
    # TimeoutError; and what reaches the route unwrapped: asyncpg's errors at connect time,
    # socket errors and timeouts.
    for exc_type in (sa_exc.SQLAlchemyError, asyncpg.PostgresError, OSError, TimeoutError):
        app.add_exception_handler(exc_type, _on_database_error)
