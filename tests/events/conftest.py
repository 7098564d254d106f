"""Fixtures of the event tests: a webhook receiver, an app that dispatches, and helpers to
read the event log and wait for the asynchronous parts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.events.models import Event
from tests.conftest import HANG_SECONDS, make_settings, start_app
from tests.events.receiver import Receiver, RunningReceiver

# Fast retries and short timeouts, so that a test of three attempts takes a second.
QUICK = {
    "webhook_dispatcher": True,
    "webhook_allow_private": True,  # the receivers listen on 127.0.0.1
    "webhook_backoff_seconds": 0.05,
    "webhook_timeout": 0.5,
    "webhook_connect_timeout": 0.5,
    "events_poll_seconds": 0.05,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with RunningReceiver() as running:
        yield running


@asynccontextmanager
async def running_app(database_url: str, **overrides: Any) -> AsyncIterator[FastAPI]:
    """An app of its own (lifespan started), e.g. with the dispatcher on."""
    application, lifespan = await start_app(make_settings(database_url, **{**QUICK, **overrides}))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], *, within: float = HANG_SECONDS
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a bound on the wait
    for background work, not a speed claim)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.05)


async def logged(application: FastAPI) -> list[dict[str, Any]]:
    """Every event body in the log, in log order."""
    async with application.state.engine.connect() as connection:
        rows = await connection.execute(select(Event.body).order_by(Event.txid, Event.seq))
        return [orjson.loads(body) for (body,) in rows]
