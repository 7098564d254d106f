"""An answer given before the request body was read (a 413 from Content-Length, a 401 before
a body is read) reaches clients that send their whole body before reading: Python's
http.client against a real `stockroom serve`. And the server's reading of what is left is
bounded."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from stockroom.edge import UnreadBodyMiddleware
from tests.support.apps import create_key
from tests.support.servers import Server, start_server

LIMIT = 1_048_576  # STOCKROOM_MAX_BODY_BYTES's default


@pytest.fixture(scope="module")
def served(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module's tests (per backend): none needs a fresh one, and a
    start-up is seconds. A test that writes asks for `client`, which empties the tables."""
    running = start_server(database_url, tmp_path_factory.mktemp("served"))
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


def send_all_then_read(
    server: Server, path: str, body: bytes, headers: dict[str, str], *, chunked: bool = False
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """What http.client does: write the request and all of its body, then read."""
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", path, body=io.BytesIO(body) if chunked else body, headers=headers,
            encode_chunked=chunked,
        )  # fmt: skip
        response = connection.getresponse()
        answer = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(answer)
    finally:
        connection.close()


@pytest.mark.parametrize("size", [LIMIT + 1, 48 * LIMIT], ids=["just-over", "48-times"])
@pytest.mark.parametrize("connection", ["close", "keep-alive"])
async def test_http_client_reads_the_413(served: Server, size: int, connection: str) -> None:
    headers = {"Content-Type": "application/json", "Connection": connection}
    status, answer_headers, body = await asyncio.to_thread(
        send_all_then_read, served, "/items", b"x" * size, headers
    )
    assert status == 413
    assert answer_headers["content-type"] == "application/problem+json"
    assert body["type"] == "/problems/content-too-large"
    assert str(LIMIT) in body["detail"]
    assert answer_headers["connection"] == "close"  # the rest of the body was not wanted


async def test_a_streamed_body_over_the_limit_is_a_readable_413_too(
    served: Server, app: FastAPI
) -> None:
    # With a key the body is read, and found too large while it streams in: 413.
    key = await create_key(app, f"unread-{uuid.uuid4().hex[:8]}", ["write"])
    headers = {"Content-Type": "application/json", "Connection": "close"}
    status, _headers, body = await asyncio.to_thread(
        send_all_then_read, served, "/items", b"x" * (48 * LIMIT),
        {**headers, "Authorization": f"Bearer {key}"}, chunked=True,
    )  # fmt: skip
    assert status == 413
    assert body["type"] == "/problems/content-too-large"
    # Without one it is never read (docs/api.md: the key comes first): a readable 401.
    status, answer_headers, body = await asyncio.to_thread(
        send_all_then_read, served, "/items", b"x" * (48 * LIMIT), headers, chunked=True
    )
    assert status == 401
    assert body["type"] == "/problems/unauthorized"
    assert answer_headers["connection"] == "close"


async def test_an_early_401_on_an_import_is_readable(
    served: Server, app: FastAPI, client: httpx.AsyncClient
) -> None:
    rows = b"sku,name,price\n" + b"".join(b"U-%d,Unread,1\n" % n for n in range(1_500_000))
    headers = {"Content-Type": "text/csv", "Connection": "close"}
    status, _headers, body = await asyncio.to_thread(
        send_all_then_read, served, "/items/import", rows, headers
    )
    assert status == 401
    assert body["type"] == "/problems/unauthorized"
    # And the same connection-closing client can then import with a key.
    # Made in-process, as `stockroom apikey create` makes it, in the server's database.
    key = await create_key(app, f"unread-{uuid.uuid4().hex[:8]}", ["write"])
    status, _headers, report = await asyncio.to_thread(
        send_all_then_read,
        served,
        "/items/import",
        rows[:1000],
        {**headers, "Authorization": f"Bearer {key}"},
    )
    assert status == 200, report
    assert report["created"] > 0


def refuse_at_once(status: int = 413) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"no"})

    return app


def request_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": headers}


async def test_reading_an_unwanted_body_stops_at_the_byte_bound() -> None:
    received = 0
    sent: list[Message] = []

    async def endless() -> Message:
        nonlocal received
        received += 1000
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def collect(message: Message) -> None:
        sent.append(message)

    app = UnreadBodyMiddleware(refuse_at_once(), max_bytes=50_000, max_seconds=60)
    await app(request_scope([(b"transfer-encoding", b"chunked")]), endless, collect)
    assert 50_000 <= received <= 52_000
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert [m.get("body") for m in sent[1:]] == [b"no", b""]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, False]


async def test_reading_an_unwanted_body_stops_at_the_time_bound() -> None:
    sent: list[Message] = []

    async def silent() -> Message:  # a client that stops sending half-way
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def collect(message: Message) -> None:
        sent.append(message)

    app = UnreadBodyMiddleware(refuse_at_once(), max_bytes=50_000, max_seconds=0.2)
    await asyncio.wait_for(app(request_scope([(b"content-length", b"9999")]), silent, collect), 30)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_client_waiting_for_100_continue_is_not_waited_for() -> None:
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def collect(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", b"999999"), (b"expect", b"100-continue")]
    await UnreadBodyMiddleware(refuse_at_once())(request_scope(headers), receive, collect)
    assert calls == 0  # the body was never asked for, so it is not read
    assert (b"connection", b"close") in sent[0]["headers"]
