"""Wake-ups for the log's readers (the stream hub and the webhook dispatcher).

A reader sleeps until the log may have grown, then reads. Three things wake it:

- PostgreSQL ``NOTIFY stockroom_events``, sent by a trigger on ``events`` when a writing
  transaction commits, from any instance (one listening connection per process, held by
  ``Database.listen``);
- a commit in this process that wrote events (an SQLAlchemy ``after_commit`` hook);
- the poll interval, the fallback for everything else (SQLite written by another process,
  PgBouncer in transaction mode where LISTEN does not work, a lost listening connection,
  and events held back by an older transaction that wrote no event).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session

from stockroom.events.log import SESSION_WROTE_EVENTS

__all__ = ["CHANNEL", "SESSION_WAKEUP", "Wakeup"]

CHANNEL = "stockroom_events"
# Session.info key of the callable that wakes this process's readers after a commit.
SESSION_WAKEUP = "stockroom_wakeup"

log = structlog.get_logger("stockroom.events")


class Wakeup:
    """Fan-in of wake-up causes, fan-out to each reader's own flag."""

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._flags: list[asyncio.Event] = []

    def reader(self) -> asyncio.Event:
        flag = asyncio.Event()
        self._flags.append(flag)
        return flag

    def wake(self) -> None:
        for flag in self._flags:
            flag.set()

    async def wait(self, flag: asyncio.Event, at_most: float | None = None) -> None:
        """Until woken or the poll interval (or ``at_most`` seconds, if sooner) has passed.

        ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 a task cancelled in the
        same instant as the flag is set got the wake-up from ``wait_for`` and lost the
        cancellation, so a reader cancelled at shutdown ran on, and the shutdown awaiting it
        hung (tests/unit/test_wakeup.py)."""
        limit = self.poll_interval if at_most is None else min(at_most, self.poll_interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(limit, 0.0)):
                await flag.wait()
        flag.clear()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(SESSION_WROTE_EVENTS, False):
        wake = session.info.get(SESSION_WAKEUP)
        if wake is not None:
            wake()
