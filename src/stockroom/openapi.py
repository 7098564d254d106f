"""The finishing touches of the OpenAPI document, which no single route can add itself.

- the ``HTTPBearer`` security scheme (the routes' scope checks declare their ``security``,
  :class:`stockroom.auth.deps.ScopedRoute`);
- the ``Problem`` and ``ValidationProblem`` components that every error response refers to
  (:func:`stockroom.problems.problem_responses` writes the references);
- ``X-Request-ID`` on every response, and ``RateLimit-*`` on every response of a route that
  needs an API key (those are the limited ones), as references to ``components/headers``;
- the event types the app knows as the pattern of ``GET /events?types=``;
- optional parameters (``If-Match``, ``Idempotency-Key``, ``cursor``, ...) as plain optional
  values: FastAPI writes ``str | None`` as "string or null", and a generated client would
  then send the text ``null``. Left out is how a client says "none".

Routes declare their own headers (``ETag``, ``Location``, ``Idempotent-Replayed``) and their
operation ids in their decorators.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from stockroom.problems import PROBLEM_SCHEMAS

__all__ = ["install_openapi"]

_INTEGER = {"type": "integer", "minimum": 0}
_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the caller's own `X-Request-ID` when it sent a sane "
        "one (1-128 of `A-Za-z0-9._-`), otherwise a new one. Log lines carry it.",
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,128}$"},
    },
    "RateLimit-Limit": {
        "description": "Requests allowed per window (with rate limiting on).",
        "schema": _INTEGER,
    },
    "RateLimit-Remaining": {
        "description": "Requests left in the window (with rate limiting on).",
        "schema": _INTEGER,
    },
    "RateLimit-Reset": {
        "description": "Seconds until the budget grows (with rate limiting on).",
        "schema": _INTEGER,
    },
}
_RATE_LIMIT = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
_TOKEN_PATTERN = r"^[0-9a-f]{40}$"
_HEADERS["Consistency-Token"] = {
    "description": "With read replicas configured: the position of the database's history "
    "that this answer reflects (a write's: after its commit). Tokens order as strings: keep "
    "the greatest seen and send it as `Consistency-Token` for read-your-writes.",
    "schema": {"type": "string", "pattern": _TOKEN_PATTERN},
}
# The item, list and ledger operations: what replicas may answer and what writes the items.
_CONSISTENT_PATHS = "/items"
_TOKEN_PARAMETER = {
    "name": "Consistency-Token",
    "in": "header",
    "required": False,
    "description": "The greatest `Consistency-Token` this client has seen: the answer "
    "reflects at least that point (read-your-writes, monotonic reads across instances). A "
    "value that is not a token is 400; a token is ignored without read replicas.",
    "schema": {"type": "string", "pattern": _TOKEN_PATTERN},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [X, {"type": "null"}], ...}`` as X (with the outer keywords)."""
    choices = schema.get("anyOf")
    if not isinstance(choices, list) or {"type": "null"} not in choices:
        return schema
    rest = [choice for choice in choices if choice != {"type": "null"}]
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    inner = rest[0] if len(rest) == 1 else {"anyOf": rest}
    return {**inner, **outer}


def list_pattern(names: Sequence[str]) -> str:
    """A comma-separated list of some of ``names``: blank parts ignored, at least one name
    (the rule of ``GET /events?types=``, whose 422 says it in words)."""
    one = "(?:" + "|".join(re.escape(name) for name in names) + ")"
    return rf"^(?:\s*,)*\s*{one}\s*(?:,\s*(?:{one}\s*)?)*$"


def _describe_event_types(document: dict[str, Any], event_types: Sequence[str]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") != "streamEvents":
                continue
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "types":
                    parameter["schema"]["pattern"] = list_pattern(event_types)
                    names = ", ".join(f"`{name}`" for name in event_types)
                    parameter["description"] = (
                        f"Comma-separated event types to receive (default: all): {names}."
                    )


def finish(
    document: dict[str, Any],
    event_types: Sequence[str] = (),
    security_schemes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add the shared components and headers to a document FastAPI built (in place)."""
    if event_types:
        _describe_event_types(document, event_types)
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(security_schemes or {})
    components.setdefault("schemas", {}).update(PROBLEM_SCHEMAS)
    components.setdefault("headers", {}).update(_HEADERS)
    for path, operations in document.get("paths", {}).items():
        consistent = path.startswith(_CONSISTENT_PATHS)
        for operation in operations.values():
            if consistent:
                operation.setdefault("parameters", []).append(dict(_TOKEN_PARAMETER))
            for parameter in operation.get("parameters", []):
                if not parameter.get("required"):
                    parameter["schema"] = _not_null(parameter["schema"])
            responses: dict[str, Any] = operation.get("responses", {})
            limited = "401" in responses
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = _ref("X-Request-ID")
                if consistent and status.startswith("2"):
                    headers["Consistency-Token"] = _ref("Consistency-Token")
                if limited:
                    headers.update({name: _ref(name) for name in _RATE_LIMIT})
    return document


def install_openapi(app: FastAPI, *, security_schemes: dict[str, Any] | None = None) -> None:
    """Serve the finished document at /openapi.json (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            event_types = getattr(app.state, "event_types", ())
            app.openapi_schema = finish(build(), event_types, security_schemes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
