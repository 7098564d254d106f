"""A real headless Chromium follows the live stream from a page on another origin: a stream
token fetched through CORS, EventSource on `GET /events?token=`, tokens that expire while it
listens, and a restart of the server (same database) with writes made elsewhere meanwhile.
The page must see every event once, in log order, with no gap."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Page, async_playwright

from tests.support.apps import create_key
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.event_log import logged
from tests.support.servers import Server, free_port, start_server
from tests.support.waiting import wait_until

PAGE = Path(__file__).with_name("stream_page.html")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origin(tmp_path: Path) -> Iterator[str]:
    """A static web server for the page, on a port of its own: another origin."""
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(PAGE, folder / "stream.html")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def stream_log(page: Page) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await page.evaluate("window.streamLog")
    return entries


async def page_events(page: Page) -> list[dict[str, Any]]:
    return [entry for entry in await stream_log(page) if entry["kind"] == "event"]


async def create_items(base_url: str, key: str, label: str, count: int) -> None:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as http:
        for n in range(count):
            body = {"sku": f"WEB-{label}-{n}", "name": f"{label} {n}", "price": 1}
            answer = await http.post("/items", json=body)
            assert answer.status_code == 201, answer.text


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0


@pytest.mark.slow
async def test_a_page_on_another_origin_follows_the_stream_across_expiry_and_restarts(
    app: FastAPI,
    client: httpx.AsyncClient,
    database_url: str,
    tmp_path: Path,
    page_origin: str,
) -> None:
    assert await asyncio.to_thread(CHROMIUM.exists), "make pytest installs Debian's chromium"
    # The browser reconnects 0.2 s after a stream drops (not its own 3 s).
    base = {
        "STOCKROOM_CORS_ORIGINS": page_origin,
        "STOCKROOM_EVENTS_POLL_SECONDS": "0.05",
        "STOCKROOM_EVENTS_RETRY_SECONDS": "0.2",
    }
    # First short-lived tokens, so that the page has to get fresh ones while it listens;
    # then the default hour, so that the browser's own reconnect carries on with its token.
    brief = {**base, "STOCKROOM_EVENTS_TOKEN_SECONDS": "2"}
    port = free_port()
    api = start_server(database_url, tmp_path, env_extra=brief, port=port)
    servers = [api]
    # Keys made in this process (the CLI that makes them is tested in tests/auth/test_cli.py).
    reader = await create_key(app, f"page-{uuid.uuid4().hex[:8]}", ["read"])  # the page's
    writer = await create_key(app, f"test-{uuid.uuid4().hex[:8]}", ["write"])  # the test's
    label = uuid.uuid4().hex[:6]
    log: list[dict[str, Any]] = []

    def restart(env: dict[str, str]) -> Server:
        stop(servers.pop(servers.index(api)))
        server = start_server(database_url, tmp_path, env_extra=env, port=port)
        servers.append(server)
        return server

    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh profile
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{page_origin}/stream.html#api={api.url}&key={reader}")

                async def mark(what: str) -> None:
                    await page.evaluate("what => note({kind: 'test', what})", what)

                async def opened_after(what: str, *, source: str = "new") -> bool:
                    """The page opened a stream after the test's mark ``what``: on a new
                    EventSource with a fresh token (``new``) or on the same one (``same``)."""
                    log = await stream_log(page)
                    marks = [i for i, e in enumerate(log) if e.get("what") == what]
                    if not marks:
                        return False
                    before = [e["source"] for e in log[: marks[-1]] if e["kind"] == "open"]
                    after = log[marks[-1] :]
                    if source == "same":
                        return any(e["kind"] == "open" and e["source"] == before[-1] for e in after)
                    return any(e["kind"] == "token" for e in after) and any(
                        e["kind"] == "open" and (not before or e["source"] > before[-1])
                        for e in after
                    )

                await mark("start")
                await wait_until(lambda: opened_after("start"))

                # Live events caused by API writes.
                await mark("writes a")
                await create_items(api.url, writer, f"{label}-a", 4)
                await wait_until(lambda: _count(page, 4))

                # The token expires: the stream ends, the page gets a fresh token and goes on.
                await mark("token expires")
                await wait_until(lambda: opened_after("token expires"))
                await mark("writes b")
                await create_items(api.url, writer, f"{label}-b", 3)
                await wait_until(lambda: _count(page, 7))

                # Restart 1 (same database, same port), with hour-long tokens from now on;
                # writes land before the page is back. Its token expired meanwhile: it gets a
                # fresh one and resumes with ?after=.
                await mark("restart 1")
                api = restart(base)
                await mark("writes c")
                await create_items(api.url, writer, f"{label}-c", 2)
                await wait_until(lambda: opened_after("restart 1"), within=60)
                await wait_until(lambda: _count(page, 9))

                # Restart 2, with writes through another instance while this one is down:
                # the browser reconnects by itself with Last-Event-ID and its valid token.
                await mark("restart 2")
                stop(servers.pop(servers.index(api)))
                elsewhere = start_server(database_url, tmp_path, env_extra=base)
                servers.append(elsewhere)
                await mark("writes d")
                await create_items(elsewhere.url, writer, f"{label}-d", 3)
                api = start_server(database_url, tmp_path, env_extra=base, port=port)
                servers.append(api)
                await mark("writes e")
                await create_items(api.url, writer, f"{label}-e", 3)
                await wait_until(lambda: opened_after("restart 2", source="same"), within=60)
                await wait_until(lambda: _count(page, 15))
                # Nothing more, and nothing twice: one last write, and the page has exactly
                # one more event (the stream is in log order: anything extra or repeated
                # would have come before it).
                await mark("writes f (the last)")
                await create_items(api.url, writer, f"{label}-f", 1)
                await wait_until(lambda: _count(page, 16))
                await mark("done")
            finally:
                # Kept for the report below, whether the test got this far or not.
                with contextlib.suppress(Exception):
                    log = await stream_log(page)
                await browser.close()
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()
        # The page's log, printed (shown by pytest) when the test fails, and kept in a file.
        report = tmp_path / "stream-page-log.json"
        report.write_text(json.dumps(log, indent=1))
        print(f"\nThe page's event log ({report}):")
        for entry in log:
            print("  " + json.dumps(entry))

    events = [entry for entry in log if entry["kind"] == "event"]
    expected = await logged(app)
    assert len(expected) == 16
    assert [e["event_id"] for e in events] == [e["id"] for e in expected]  # none missing or twice
    assert [e["type"] for e in events] == [e["type"] for e in expected]
    assert len({e["id"] for e in events}) == len(events)
    restart_2 = next(i for i, e in enumerate(log) if e.get("what") == "restart 2")
    assert not [e for e in log[restart_2:] if e["kind"] in ("token", "connect")]


async def _count(page: Page, wanted: int) -> bool:
    return len(await page_events(page)) >= wanted
