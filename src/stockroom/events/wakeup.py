"""Wake-ups for the log's readers (the stream hub and the webhook dispatcher).

A reader sleeps until the log may have grown, then reads. Three things wake it:

- PostgreSQL ``NOTIFY stockroom_events``, sent by a trigger on ``events`` when a writing
  transaction commits, from any instance (one listening connection per process);
- a commit in this process that wrote events (an SQLAlchemy ``after_commit`` hook);
- the poll interval, the fallback for everything else (SQLite written by another process,
  PgBouncer in transaction mode where LISTEN does not work, a lost listening connection,
  and events held back by an older transaction that wrote no event).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session

from stockroom.events.log import SESSION_WROTE_EVENTS
from stockroom.settings import Settings

__all__ = ["CHANNEL", "SESSION_WAKEUP", "Wakeup", "listen_for_events"]

CHANNEL = "stockroom_events"
# Session.info key of the callable that wakes this process's readers after a commit.
SESSION_WAKEUP = "stockroom_wakeup"
_RECONNECT_SECONDS = 2.0

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
        """Until woken or the poll interval (or ``at_most`` seconds, if sooner) has passed."""
        limit = self.poll_interval if at_most is None else min(at_most, self.poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flag.wait(), max(limit, 0.0))
        flag.clear()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(SESSION_WROTE_EVENTS, False):
        wake = session.info.get(SESSION_WAKEUP)
        if wake is not None:
            wake()


async def listen_for_events(settings: Settings, wakeup: Wakeup) -> None:
    """Hold one LISTEN connection (PostgreSQL, not through PgBouncer) and wake the readers
    on each notification; reconnect when it is lost. Runs until cancelled."""
    dsn = settings.database.set(drivername="postgresql").render_as_string(hide_password=False)

    def on_notify(*_args: Any) -> None:
        wakeup.wake()

    while True:
        connection: asyncpg.Connection | None = None
        try:
            connection = await asyncpg.connect(
                dsn,
                timeout=settings.database_connect_timeout,
                server_settings={"application_name": "stockroom-listen"},
            )
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _conn, flag=lost: flag.set())
            await connection.add_listener(CHANNEL, on_notify)
            wakeup.wake()  # anything committed while we were not listening
            await lost.wait()
            log.warning("event listener connection lost; reconnecting")
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("event listener cannot connect; polling until it can", error=str(exc))
        finally:
            if connection is not None and not connection.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))
        await asyncio.sleep(_RECONNECT_SECONDS)
