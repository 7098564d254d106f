"""The web console: static files (ES modules, no build step) served by the service itself.

The console is a client of the public API like any other: every call it makes carries the
user's API key, so its files hold no data and are open without one. ``GET /`` redirects to
it. Neither appears in the OpenAPI document (a mount, and a route left out of the schema).

Every answer of the console carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only, no inline script or style, no framing), so a script
injected into the data it shows could neither run nor send anything elsewhere.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONSOLE_PATH", "SECURITY_HEADERS", "console_app", "router"]

CONSOLE_PATH = "/console"
_FOLDER = Path(__file__).parent
# What the console is made of; the package's Python files beside them are not served.
_SERVED_SUFFIXES = frozenset({".html", ".js", ".css", ".svg"})

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every visit (a 304 when unchanged): a new release shows at once, and no
    # page ever runs a mix of old and new modules.
    "Cache-Control": "no-cache",
}
_RAW_HEADERS = [
    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()
]

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The service's front door is the console."""
    return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)


class _Console:
    """The console's files, with the security headers on every answer and compressed for
    clients that accept it (the first visit's JavaScript shrinks to about a third)."""

    def __init__(self) -> None:
        self._files: ASGIApp = GZipMiddleware(
            StaticFiles(directory=_FOLDER, html=True), minimum_size=512
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = PurePosixPath(scope["path"])
        if scope["path"].endswith("/"):
            path = path / "index.html"
        if path.suffix not in _SERVED_SUFFIXES or "__pycache__" in path.parts:
            raise HTTPException(status_code=404)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_RAW_HEADERS]
            await send(message)

        await self._files(scope, receive, send_with_headers)


def console_app() -> ASGIApp:
    """What the app mounts at :data:`CONSOLE_PATH`."""
    return _Console()
