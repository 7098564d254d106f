"""HTTP at the edge, as pure ASGI middleware: HEAD for every GET route, CORS for browsers,
and request bodies left unread by an early answer.

- :class:`HeadMiddleware` answers ``HEAD`` by running the ``GET`` and sending only its status
  and headers (so ``Content-Length``, ``ETag`` and a conditional 304 are the GET's). A route
  whose GET streams (the export, ``GET /events``) checks :func:`is_head` and answers
  :func:`without_body` instead of starting the stream.
- :class:`CorsMiddleware` is Starlette's, with a refused preflight answered as problem+json.
  It is the outermost layer but one, so every answer, errors included, carries its headers,
  and a preflight is answered before authentication.
- :class:`UnreadBodyMiddleware`: an answer given before the request body was read (a 413 from
  ``Content-Length``, a 401 or 415 before the body was looked at) closes the connection after
  it, and first reads and throws away the rest of the body, within bounds. Otherwise a client
  that sends its whole body before reading (``http.client``, ``urllib``, ``requests``) gets a
  connection reset instead of the answer: a socket closed with unread data sends RST.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockroom.problems import problem_response

__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "CorsMiddleware",
    "HeadMiddleware",
    "UnreadBodyMiddleware",
    "api_methods",
    "is_head",
    "without_body",
]

HEAD_SCOPE_KEY = "stockroom.head"

# What a page on an allowed origin may send, and read, beyond the CORS-safelisted headers.
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "Last-Event-ID",
    "Consistency-Token",
)
CORS_EXPOSE_HEADERS = (
    "ETag",
    "Location",
    "X-Request-ID",
    "Idempotent-Replayed",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "Consistency-Token",
)
CORS_MAX_AGE = 600

# How much of a request body left unread is read and thrown away before the connection is
# closed, at most: a client cannot keep the server reading for longer or more than this.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0


def is_head(request: Request) -> bool:
    """Whether this GET is really a HEAD (see :class:`HeadMiddleware`)."""
    return bool(request.scope.get(HEAD_SCOPE_KEY, False))


def without_body(response: Response) -> Response:
    """``response``'s status and headers only, without running its body: what a streaming
    route answers to HEAD. Like the GET's, the answer has no ``Content-Length``."""
    bare = Response(status_code=response.status_code)
    bare.raw_headers = list(response.raw_headers)
    return bare


def api_methods(app: FastAPI) -> list[str]:
    """Every method some API route serves, and HEAD (answered for every GET)."""
    methods = {
        method
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in context.methods or ()
    }
    return sorted(methods | {"HEAD"})


class HeadMiddleware:
    """``HEAD`` is the ``GET`` of the same URL without its body (RFC 9110 §9.3.2): same
    status, same headers. The GET runs as usual (authentication, validation, ``If-None-Match``
    and all); its body is dropped. The routes themselves declare only GET, so the OpenAPI
    document is unchanged. Innermost: the access log and metrics still see ``HEAD``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # A copy, not the server's scope: the server itself must still know this is a HEAD
        # (uvicorn then writes no body and no chunked framing).
        scope.setdefault("state", {})
        inner = {**scope, "method": "GET", HEAD_SCOPE_KEY: True}
        answered = False

        async def send_headers_only(message: Message) -> None:
            nonlocal answered
            if answered:
                return  # the GET's body
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered = True

        try:
            await self.app(inner, receive, send_headers_only)
        finally:
            # What routing found (the route, its path parameters) is for the outer layers
            # too: the access log and metrics name the route template.
            scope.update({k: v for k, v in inner.items() if k not in ("method", HEAD_SCOPE_KEY)})


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS middleware; a refused preflight is a problem+json 400 naming what
    was refused (origin, method or headers) instead of plain text."""

    def __init__(self, app: ASGIApp, *, origins: Collection[str], methods: Collection[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=methods,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            allow_credentials=False,
            max_age=CORS_MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        kept = {
            name: value
            for name, value in response.headers.items()
            if name.startswith("access-control-") or name == "vary"
        }
        return problem_response(
            400,
            "cors-refused",
            f"This cross-origin request is not allowed ({refused}); the allowed origins are "
            "set by STOCKROOM_CORS_ORIGINS.",
            title="Cross-origin request refused",
            headers=kept,
        )


def _announces_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bytes(value).strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


class UnreadBodyMiddleware:
    """Reads and throws away a request body its answer left unread, before the answer ends,
    within ``max_bytes`` and ``max_seconds``; such an answer also closes the connection
    (``Connection: close``). The answer's bytes go out first, so a client that reads while
    it sends sees them at once; one that sends everything first reads them afterwards. A
    body past either bound is left unread: the connection closes and that client may see a
    reset, but it cannot keep the server reading. Outermost, so every answer is covered."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = DRAIN_MAX_BYTES,
        max_seconds: float = DRAIN_MAX_SECONDS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _announces_body(scope):
            await self.app(scope, receive, send)
            return
        # A client that waits for "100 Continue" has not sent the body unless it was asked.
        waits_for_continue = any(
            name == b"expect" and bytes(value).lower() == b"100-continue"
            for name, value in scope["headers"]
        )
        asked = False
        body_read = False
        unread = False

        async def tracking_receive() -> Message:
            nonlocal asked, body_read
            asked = True
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def draining_send(message: Message) -> None:
            nonlocal unread
            if message["type"] == "http.response.start" and not body_read:
                unread = True
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif (
                unread
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and not body_read
                and (asked or not waits_for_continue)
            ):
                await send({**message, "more_body": True})
                await self._drain(tracking_receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, tracking_receive, draining_send)

    async def _drain(self, receive: Receive) -> None:
        discarded = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_seconds):
                while discarded <= self.max_bytes:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    discarded += len(message.get("body", b""))
