"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it costs a task per request and breaks
context variables): request ids, access log, last-resort 500s, and the request body limit."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockroom.errors import internal_error_response, problem_response

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")

access_log = structlog.get_logger("stockroom.access")
error_log = structlog.get_logger("stockroom.errors")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """Gives every request an id (the caller's, if sane), echoes it in ``X-Request-ID``,
    binds it to the request's log lines, writes one access line, and answers a problem+json
    500 for any exception nothing else handled (the traceback goes to the log only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER)
        sane = given is not None and _SANE_REQUEST_ID.fullmatch(given)
        request_id = given.decode() if sane and given else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled error", path=scope.get("path"))
            if response_started:
                raise  # the client sees a cut connection; nothing else can be said now
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            access_log.info(
                "request",
                method=scope["method"],
                route=_route_template(scope),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            structlog.contextvars.clear_contextvars()


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes``: at once when ``Content-Length`` says so,
    otherwise as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await problem_response(413, "content-too-large", self._detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the body read, so the app's error handlers render it.
                    raise HTTPException(413, detail=self._detail)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _detail(self) -> str:
        return f"The request body is larger than the limit of {self.max_bytes} bytes."
