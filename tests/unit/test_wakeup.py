"""The wake-ups of the log's readers (events.wakeup): waiting ends by a wake-up, by the
poll interval, and by a cancellation, whichever comes first."""

from __future__ import annotations

import asyncio

import pytest

from stockroom.events.wakeup import Wakeup


async def _waiting(wakeup: Wakeup, flag: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(wakeup.wait(flag))
    for _ in range(3):  # until it waits on the flag
        await asyncio.sleep(0)
    assert not task.done()
    return task


def test_a_wake_up_ends_the_wait_and_clears_the_flag() -> None:
    async def scenario() -> None:
        wakeup = Wakeup(poll_interval=60)
        flag = wakeup.reader()
        task = await _waiting(wakeup, flag)
        wakeup.wake()
        await task
        assert not flag.is_set()

    asyncio.run(scenario())


def test_a_cancellation_that_comes_with_a_wake_up_still_cancels() -> None:
    """A reader's task (the event hub, the dispatcher) cancelled at shutdown in the same
    instant as a commit wakes it must end: asyncio.wait_for on Python 3.11 returned the
    wake-up instead and dropped the cancellation, so the task ran on and the shutdown that
    awaited it hung (a lifespan's exit in the test suite, once in a few runs)."""

    async def scenario() -> None:
        wakeup = Wakeup(poll_interval=60)
        flag = wakeup.reader()
        task = await _waiting(wakeup, flag)
        wakeup.wake()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
