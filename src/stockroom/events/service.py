"""The live change stream: which events a client asked for, and the events themselves, replayed
from the log up to where the live feed (the process's :class:`~stockroom.events.hub.EventHub`)
begins, then live, with no gap and no duplicate. ``events.router`` makes it an SSE response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.errors import InvalidRequestError, StockroomError, UnavailableError
from stockroom.events.hub import EventHub
from stockroom.events.log import LoggedEvent, Position, event_exists, read_after

__all__ = ["CursorGoneError", "Stream", "open_stream", "parse_types"]

_REPLAY_BATCH = 500


class CursorGoneError(StockroomError):
    status, slug, title = 410, "cursor-expired", "Cursor expired"


def parse_types(types: str | None, known: Sequence[str]) -> frozenset[str] | None:
    """The types asked for (of ``known``: the app's event types, which the domains that
    write events define); None: all."""
    if types is None:
        return None
    wanted = frozenset(part.strip() for part in types.split(",") if part.strip())
    unknown = sorted(wanted - set(known))
    if not wanted or unknown:
        raise InvalidRequestError(
            f"Unknown event type(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(known)}.",
            loc=("query", "types"),
        )
    return wanted


@dataclass(frozen=True, slots=True)
class Stream:
    """A client's stream, checked and ready: iterate :meth:`events` to follow it."""

    engine: AsyncEngine
    hub: EventHub
    start: Position | None  # None: from now on
    wanted: frozenset[str] | None  # None: every type
    ends_at: float | None  # Unix seconds (a stream token's expiry), or None
    # A replica's engine for the replay (the primary goes on where the replica stops).
    replica: AsyncEngine | None = None

    def events(self) -> AsyncIterator[LoggedEvent]:
        return _events(self)


async def open_stream(
    engine: AsyncEngine,
    hub: EventHub,
    cursor: str | None,
    wanted: frozenset[str] | None,
    ends_at: float | None,
    replica: AsyncEngine | None = None,
) -> Stream:
    """The stream after ``cursor`` (an event id the client had), or from now on: 410 if the
    log no longer has that event, 503 while the hub has no database to follow."""
    start = None
    if cursor is not None:
        start = Position.parse(cursor)
        if start is None or not await _known(engine, start):
            raise CursorGoneError(
                "No stored event has this id: it is not one of ours, or the event is older "
                "than the retention period. Reconnect without a cursor."
            )
    if hub.position is None:
        raise UnavailableError("The event stream is not ready yet (no database); retry.")
    return Stream(engine, hub, start, wanted, ends_at, replica if start is not None else None)


async def _known(engine: AsyncEngine, position: Position) -> bool:
    async with engine.connect() as connection:
        return await event_exists(connection, position)


async def _events(stream: Stream) -> AsyncIterator[LoggedEvent]:
    # Subscribed here, when the client starts reading, not when the stream is opened: the
    # generator's `finally` always unsubscribes.
    subscription = stream.hub.subscribe()
    wanted = stream.wanted
    expiry = None
    if stream.ends_at is not None:
        # Ending the subscription ends the stream after what is already queued.
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, stream.ends_at - time.time()), subscription.end
        )
    try:
        last = subscription.start if stream.start is None else stream.start
        # Replay what the client missed, up to where the live feed begins: from a replica
        # where there is one, as far as it has replayed, then from the primary (the rest up
        # to the live feed's start, and all of it if the replica fails).
        replica = stream.replica
        while last < subscription.start:
            try:
                async with (replica or stream.engine).connect() as connection:
                    batch = await read_after(
                        connection, last, limit=_REPLAY_BATCH, until=subscription.start
                    )
            except (DBAPIError, OSError, TimeoutError):
                if replica is None:
                    raise
                replica = None  # the rest from the primary
                continue
            for event in batch:
                if wanted is None or event.type in wanted:
                    yield event
                last = event.position
            if len(batch) < _REPLAY_BATCH:
                if replica is None:
                    break
                replica = None  # the replica has no more (yet): the primary may
        async for event in subscription.events():
            if event.position <= last:  # the client had it already (from another instance)
                continue
            last = event.position
            if wanted is None or event.type in wanted:
                yield event
    finally:
        if expiry is not None:
            expiry.cancel()
        subscription.end()
