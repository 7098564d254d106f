"""A real HTTP server on 127.0.0.1 that receives webhooks, for the delivery tests.

It runs uvicorn in a thread of its own (its own event loop), so the test's loop cannot
slow it down. Paths choose the behaviour:

- ``/ok``: 204;
- ``/flaky/N``: 503 for the first N requests of each webhook-id, then 200;
- ``/fail``: always 500;
- ``/hang``: never answers (until the server stops);
- ``/slow``: 204 after ``Receiver.delay`` seconds (the test may change it at any time);
- ``/cookie``: 204 that sets a cookie;
- ``/big``: 200 with a 1 MB body;
- ``/redirect``: 302 to ``/ok`` (which must not be followed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.support.servers import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    client: tuple[str, int] | None = None  # the sender's address and port


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    _seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received if r.path == path]

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender died mid-request (a killed process): nothing was delivered
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        with self._lock:
            client = tuple(scope["client"]) if scope.get("client") else None
            self.received.append(Received(path, headers, body, time.monotonic(), client))
            self._seen[(path, headers.get("webhook-id", ""))] += 1
            seen = self._seen[(path, headers.get("webhook-id", ""))]
        status, extra, payload = 204, [], b""
        if path.startswith("/flaky/"):
            status = 503 if seen <= int(path.rsplit("/", 1)[1]) else 200
        elif path == "/fail":
            status = 500
        elif path == "/hang":
            await asyncio.sleep(3600)
        elif path == "/slow":
            await asyncio.sleep(self.delay)
        elif path == "/big":
            status, payload = 200, b"x" * 1_000_000
        elif path == "/redirect":
            status, extra = 302, [(b"location", b"/ok")]
        elif path == "/cookie":
            extra = [(b"set-cookie", b"session=secret; Path=/")]
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": payload})


class RunningReceiver:
    def __init__(self) -> None:
        self.receiver = Receiver()
        config = uvicorn.Config(
            self.receiver,
            host="127.0.0.1",
            port=self.receiver.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=60,  # a sender keeps its connections: its ports name it
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.02)
        return self.receiver

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
