"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it costs a task per request and breaks
context variables): request context (ids, metrics, access log, last-resort 500s), the
request body limit and rate limit headers."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import time
import weakref
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockroom.database.consistency import CONSISTENCY, TOKEN_HEADER, Consistency, parse_token
from stockroom.observability import AccessLog, Metrics
from stockroom.problems import internal_error_response, problem_response, unavailable_response
from stockroom.ratelimit import STATE_KEY, Quota

__all__ = [
    "BodyLimitMiddleware",
    "ConsistencyMiddleware",
    "RateLimitHeadersMiddleware",
    "RequestContextMiddleware",
]

REQUEST_ID_HEADER = b"x-request-id"
_TOKEN_HEADER = TOKEN_HEADER.lower().encode()
_CONSISTENT_PATHS = "/items"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")

error_log = structlog.get_logger("stockroom.errors")

# Response headers the request-context middleware replaces or removes.
_DROPPED = frozenset({REQUEST_ID_HEADER})
_NO_CONTENT_DROPPED = frozenset({REQUEST_ID_HEADER, b"content-type"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


UNMATCHED_ROUTE = "<unmatched>"


def _route_template(scope: Scope, root_path: str) -> str:
    """The matched route's path as documented (``/items/{item_id}``, without convertors).

    A request the routes never saw is labelled by the route its path would match: one
    answered before routing (a 413 from the body limit), by the router itself (a redirect
    to the path with or without its trailing slash: the route it leads to), or by a mount
    (the docs assets: its template, ``/docs-assets/{path}``). Only a path no route
    matches is ``<unmatched>``; labels stay bounded whatever clients send."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return _template_by_matching(scope, root_path) or UNMATCHED_ROUTE


def _template_by_matching(scope: Scope, root_path: str) -> str | None:
    routes = _leaf_routes(scope.get("app"))
    path: str = scope["path"]
    toggled = path.removesuffix("/") if path.endswith("/") else path + "/"
    for candidate in (path, toggled) if path != "/" else (path,):
        # As the request arrived: a mount it went through has changed the scope's root_path.
        probe = {**scope, "path": candidate, "root_path": root_path}
        partial = None
        for route in routes:
            match, _ = route.matches(probe)
            if match is Match.FULL:
                return str(route.path_format)
            if match is Match.PARTIAL and partial is None:
                partial = str(route.path_format)  # the path, with another method (a 405)
        if partial is not None:
            return partial
    return None


_LEAF_ROUTES: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _leaf_routes(app: Any) -> list[Any]:
    """The app's routes and mounts, flattened out of FastAPI's included routers (which
    hold the routes with their full paths); worked out once per app."""
    leaves = _LEAF_ROUTES.get(app)
    if leaves is not None:
        return leaves
    leaves = []
    pending = list(getattr(getattr(app, "router", None), "routes", []))
    while pending:
        route = pending.pop(0)
        included = getattr(route, "original_router", None)
        if included is not None:
            pending[:0] = included.routes
        elif isinstance(getattr(route, "path_format", None), str):
            leaves.append(route)
    if app is not None:
        _LEAF_ROUTES[app] = leaves
    return leaves


class RequestContextMiddleware:
    """Everything every request gets, in one layer (one ``send`` wrapper, one clock):

    - an id (the caller's, if sane), echoed in ``X-Request-ID`` and bound to the request's
      log lines;
    - metrics: counted by route template, method and status, timed, and tracked while in
      flight;
    - one access log line;
    - a problem+json 500 for any exception nothing else handled (the traceback goes to the
      log only), or a 503 for a request cancelled by the shutdown.

    Outermost, so that the metrics and the access line see the status the client got."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _brief_lifespan_failures(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        given = _header(scope, REQUEST_ID_HEADER)
        sane = given is not None and _SANE_REQUEST_ID.fullmatch(given)
        request_id = given.decode() if sane and given else secrets.token_hex(16)
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                # A 204 has no body, so no content type either (FastAPI gives the route's
                # default, application/json).
                dropped = _NO_CONTENT_DROPPED if status == 204 else _DROPPED
                headers = [h for h in message.get("headers", []) if h[0] not in dropped]
                headers.append(id_header)
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server cancels requests still running when the graceful shutdown timeout
            # ends. Their transactions roll back; tell the client so cleanly (503, safe to
            # retry) rather than cutting the connection, then let the cancellation go on.
            if not response_started:
                await unavailable_response("The service is shutting down; retry shortly.")(
                    scope, receive, send_with_id
                )
            raise
        except Exception:
            error_log.exception("unhandled error", path=scope.get("path"))
            if response_started:
                raise  # the client sees a cut connection; nothing else can be said now
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope, root_path)
            self.metrics.in_flight.dec()
            self.metrics.observe_request(route, scope["method"], status, seconds)
            self.access_log.write(request_id, scope["method"], route, status, seconds)
            structlog.contextvars.reset_contextvars(**bound)


def _brief_lifespan_failures(send: Send) -> Send:
    """Starlette reports a failed start-up or shutdown with the whole traceback as the
    message, which uvicorn logs as it is: tell it in one line instead, the error's type and
    first line (a traceback helps no one who starts the service, and may quote SQL)."""

    async def send_briefly(message: Message) -> None:
        if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            stage = "start-up" if message["type"] == "lifespan.startup.failed" else "shutdown"
            failure = sys.exception()  # sent from the framework's except block
            reason = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
            what = type(failure).__name__ if failure is not None else "error"
            message = {**message, "message": f"Application {stage} failed: {what}: {reason}"}
        await send(message)

    return send_briefly


class BodyLimitMiddleware:
    """Refuses request bodies over the limit: at once when ``Content-Length`` says so,
    otherwise as soon as the streamed body passes it. ``per_path`` gives some paths (file
    imports) a limit of their own."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        detail = f"The request body is larger than the limit of {limit} bytes."
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await problem_response(413, "content-too-large", detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the body read, so the app's error handlers render it.
                    raise HTTPException(413, detail=detail)
            return message

        await self.app(scope, limited_receive, send)


class RateLimitHeadersMiddleware:
    """Adds ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` to every
    response of a rate-limited request, errors included. The rate limit dependency (which
    knows the caller) leaves its :class:`~stockroom.ratelimit.Quota` in the request state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                quota = scope.get("state", {}).get(STATE_KEY)
                if isinstance(quota, Quota):
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), *quota.headers()],
                    }
            await send(message)

        await self.app(scope, receive, send_with_quota)


class ConsistencyMiddleware:
    """Read-your-writes across replicas (``stockroom.database.consistency``) on the
    ``/items`` operations (those the OpenAPI document declares the header on): a
    ``Consistency-Token`` that is not one is a 400, replicas or not (the document's promise);
    where replicas are configured, the token goes in the context for the database, and the
    token of what the answer reflects into its own ``Consistency-Token``. Without replicas
    every read is the primary's, and nothing else is done."""

    def __init__(self, app: ASGIApp, *, replicas: bool) -> None:
        self.app = app
        self.replicas = replicas

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_CONSISTENT_PATHS):
            await self.app(scope, receive, send)
            return
        wanted = None
        raw = _header(scope, _TOKEN_HEADER)
        if raw is not None:
            wanted = parse_token(raw.decode("latin-1").strip())
            if wanted is None:
                detail = "Consistency-Token must be a token this service gave (40 hex digits)."
                await problem_response(400, "invalid-consistency-token", detail)(
                    scope, receive, send
                )
                return
        if not self.replicas:
            await self.app(scope, receive, send)
            return
        state = Consistency(wanted)
        reset = CONSISTENCY.set(state)

        async def send_token(message: Message) -> None:
            if message["type"] == "http.response.start" and state.seen is not None:
                headers = [*message.get("headers", ()), (_TOKEN_HEADER, state.seen.token.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_token)
        finally:
            CONSISTENCY.reset(reset)
