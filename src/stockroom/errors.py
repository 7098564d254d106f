"""The domain error tree: what services raise when a request cannot be done.

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

Services raise these; they know nothing of HTTP (each class only names the problem type,
title and status it stands for). :mod:`stockroom.problems` renders them, and every other
error, as problem documents (RFC 9457) at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
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
]


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
