"""The web console: static files (ES modules, no build step) served by the service itself.

The console is a client of the public API like any other: every call it makes carries the
user's API key, so its files hold no data and are open without one. ``GET /`` redirects to
it. Neither appears in the OpenAPI document (a mount, and a route left out of the schema).

Every answer of the console carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only, no inline script or style, no framing), so a script
injected into the data it shows could neither run nor send anything elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

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


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    gzipped: bytes | None  # None: too small to be worth it
    etag: bytes
    media_type: bytes


def _load_files() -> dict[str, _File]:
    """Every file the console serves, read, compressed and tagged once (at start-up)."""
    files: dict[str, _File] = {}
    for path in sorted(_FOLDER.rglob("*")):
        if path.suffix not in _SERVED_SUFFIXES or "__pycache__" in path.parts:
            continue
        body = path.read_bytes()
        gzipped = gzip.compress(body, compresslevel=9, mtime=0) if len(body) >= 512 else None
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()
        media_type = _MEDIA_TYPES[path.suffix].encode()
        files[path.relative_to(_FOLDER).as_posix()] = _File(body, gzipped, etag, media_type)
    return files


_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class _Console:
    """The console's files, from memory: read, gzip-compressed (for clients that accept it:
    the first visit's JavaScript shrinks to about a third) and given an ETag once, when the
    app is made. A visit revalidates each file (``Cache-Control: no-cache``): a 304 costs a
    dictionary look-up, with no file system call and no compression per request. Every
    answer carries the security headers."""

    def __init__(self) -> None:
        self._files = _load_files()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        # The path inside the mount (Starlette keeps the whole path and sets root_path).
        path = scope["path"][len(scope.get("root_path", "")) :].lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        found = self._files.get(path)
        if found is None:
            raise HTTPException(status_code=404)
        headers = dict(scope["headers"])
        gzipped = found.gzipped is not None and b"gzip" in headers.get(b"accept-encoding", b"")
        etag = found.etag[:-1] + b'-gz"' if gzipped else found.etag
        vary = [(b"vary", b"Accept-Encoding")] if found.gzipped is not None else []
        if etag in headers.get(b"if-none-match", b""):
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(b"etag", etag), *vary, *_RAW_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = found.gzipped if gzipped and found.gzipped is not None else found.body
        response_headers = [
            (b"content-type", found.media_type),
            (b"content-length", str(len(body)).encode()),
            (b"etag", etag),
            *vary,
            *([(b"content-encoding", b"gzip")] if gzipped else []),
            *_RAW_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})


def console_app() -> ASGIApp:
    """What the app mounts at :data:`CONSOLE_PATH`."""
    return _Console()
