"""The LISTEN connection (database/_postgresql/_listen.py) outlives a database crash."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from stockroom.database._postgresql import _listen


class _ClosedUnderUs:
    """A connection the server dropped between the handshake and LISTEN (a crash)."""

    def add_termination_listener(self, _callback: Any) -> None:
        pass

    async def add_listener(self, _channel: str, _callback: Any) -> None:
        raise asyncpg.InterfaceError("cannot call Connection.add_listener(): connection is closed")

    def is_closed(self) -> bool:
        return True


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12"),
        ConnectionResetError(),
    ],
)
async def test_a_connection_lost_before_listen_is_made_again(
    monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    attempts = 0
    third = asyncio.Event()

    async def connect(*_args: Any, **_kwargs: Any) -> _ClosedUnderUs:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            third.set()
        if attempts == 1:
            return _ClosedUnderUs()
        raise failure

    monkeypatch.setattr(asyncpg, "connect", connect)
    monkeypatch.setattr(_listen, "_RECONNECT_SECONDS", 0.0)
    task = asyncio.create_task(_listen.listen("postgresql://x", 1.0, "events", lambda: None))
    try:
        # The third attempt is made (the first's loss did not end the task) ...
        await asyncio.wait_for(third.wait(), timeout=5)
        assert not task.done()  # ... and it still runs
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
