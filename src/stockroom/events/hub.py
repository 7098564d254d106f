"""Fan-out of the event log to this process's stream subscribers.

One task per process reads the log (one query per wake-up, whatever the number of
subscribers) and offers each new event to every subscriber's bounded queue. A subscriber
that falls behind by more than its queue is cut off: its stream ends after what it has
already queued, and the client resumes from its last event id, replayed from the log. So a
slow reader costs a bounded amount of memory and never slows the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.errors import UnavailableError
from stockroom.events.log import LoggedEvent, Position, latest_position, read_after
from stockroom.events.wakeup import Wakeup

__all__ = ["EventHub", "Subscription"]

READ_BATCH = 500
_RETRY_SECONDS = 1.0
_MIN_GAP = 0.02  # seconds at least between two reads of the log (one per burst of commits)

log = structlog.get_logger("stockroom.events")


class Subscription:
    """One stream's view of the hub: the events after ``start``, as they become final."""

    def __init__(self, hub: EventHub, start: Position, queue_size: int) -> None:
        self._hub = hub
        self.start = start
        self._limit = queue_size
        # One slot more than the limit, for the end marker.
        self._queue: asyncio.Queue[LoggedEvent | None] = asyncio.Queue(queue_size + 1)
        self._ended = False
        self.overflowed = False

    def offer(self, event: LoggedEvent) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= self._limit:
            self.overflowed = True
            self.end()
            return
        self._queue.put_nowait(event)

    def end(self) -> None:
        """Stop after what is queued (idempotent)."""
        if not self._ended:
            self._ended = True
            self._hub.unsubscribe(self)
            self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[LoggedEvent]:
        """Queued events in order, until the subscription ends."""
        while (event := await self._queue.get()) is not None:
            yield event


class EventHub:
    def __init__(self, engine: AsyncEngine, wakeup: Wakeup, *, queue_size: int) -> None:
        self._engine = engine
        self._wakeup = wakeup
        self._flag = wakeup.reader()
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self.position: Position | None = None

    def subscribe(self) -> Subscription:
        """A subscription to every event after the hub's position now. Events up to that
        position are the caller's to replay from the log (they are all final)."""
        if self.position is None:
            raise UnavailableError("The event stream is not ready yet (no database); retry.")
        subscription = Subscription(self, self.position, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        async with self._engine.connect() as connection:
            self.position = await latest_position(connection)

    def close(self) -> None:
        """End every stream (at shutdown); clients resume elsewhere by their last id."""
        for subscription in list(self._subscribers):
            subscription.end()

    async def run(self) -> None:
        """Follow the log until cancelled."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep trying
                log.warning("event hub cannot read the log; retrying", error=str(exc))
                await asyncio.sleep(_RETRY_SECONDS)

    async def _follow(self) -> None:
        if self.position is None:
            await self.start()
        while True:
            await self._wakeup.wait(self._flag)
            started = asyncio.get_running_loop().time()
            await self._catch_up()
            # Commits that come in the meantime are read together, in one go, next time.
            await asyncio.sleep(started + _MIN_GAP - asyncio.get_running_loop().time())

    async def _catch_up(self) -> None:
        assert self.position is not None
        async with self._engine.connect() as connection:
            if not self._subscribers:
                # Nobody to feed: just move along, without reading bodies. Unless a stream
                # subscribed while the log was asked: it starts at the position of before,
                # and replays only up to there, so what came since is its to be fed.
                latest = await latest_position(connection)
                if not self._subscribers:
                    self.position = max(self.position, latest)
                    return
            while True:
                batch = await read_after(connection, self.position, limit=READ_BATCH)
                if batch:
                    self._publish(batch)
                if len(batch) < READ_BATCH:
                    return

    def _publish(self, batch: list[LoggedEvent]) -> None:
        # No await in here: a subscriber added later starts exactly at the new position.
        for event in batch:
            for subscription in list(self._subscribers):
                subscription.offer(event)
        self.position = batch[-1].position
