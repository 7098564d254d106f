"""Waiting in tests: for background work to be done, and for a call that must end by itself.

``HANG_SECONDS`` is how long a test lets a call that must end by itself (a timeout, a
refusal, a 503) run, or waits for background work, before it calls it a hang. It is a bound
on the wait, never a speed claim: tests show *why* a call ended (the lock or the connection
was still held when the 503 came), not how fast, so a loaded machine slows them down without
failing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

HANG_SECONDS = 30.0


def not_a_hang() -> asyncio.Timeout:
    """``async with not_a_hang():`` fails the test if the block is still waiting after
    ``HANG_SECONDS`` (works for in-process apps too, where httpx's own timeouts do not)."""
    return asyncio.timeout(HANG_SECONDS)


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
