"""``GET /events``: the live change stream (Server-Sent Events), resumable from the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from stockroom.auth.deps import READ, TOKEN_EXPIRES_STATE, ScopedRoute, accepts_stream_token
from stockroom.edge import is_head, without_body
from stockroom.errors import InvalidRequestError, StockroomError, UnavailableError
from stockroom.events.hub import EventHub
from stockroom.events.log import Position, event_exists, read_after
from stockroom.problems import problem_responses

__all__ = ["CursorGoneError", "router"]

_REPLAY_BATCH = 500

router = APIRouter(
    route_class=ScopedRoute,
    tags=["events"],
    responses=problem_responses(401, 403, 422, 500, 503),
)


class CursorGoneError(StockroomError):
    status, slug, title = 410, "cursor-expired", "Cursor expired"


_STREAM_DOC = {
    200: {
        "description": "A `text/event-stream`: each message has `id` (the cursor), `event` "
        "(the type) and `data` (the webhook body, one JSON line). With "
        "STOCKROOM_EVENTS_RETRY_SECONDS set, a `retry:` line (milliseconds) comes first.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **problem_responses(410),
}


@router.get(
    "/events",
    dependencies=[READ],
    response_class=EventSourceResponse,
    responses=_STREAM_DOC,
    operation_id="streamEvents",
)
@accepts_stream_token
async def stream_events(
    request: Request,
    types: Annotated[
        str | None,
        # The document gives the pattern of the app's event types (stockroom.openapi).
        Query(description="Comma-separated event types to receive (default: all)."),
    ] = None,
    after: Annotated[
        str | None, Query(description="Resume right after this event id (cursor).")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume right after this event id; wins over `after`."),
    ] = None,
    token: Annotated[
        str | None,
        Query(
            description="A stream token from `POST /events/tokens`, instead of the "
            "`Authorization` header (for `EventSource`). The stream ends when it expires."
        ),
    ] = None,
) -> Response:
    """Every committed change as it becomes final, in log order. With a cursor, the events
    after it are replayed from the log first, with no gap and no duplicate."""
    wanted = _parse_types(types, request.app.state.event_types)
    cursor = last_event_id if last_event_id is not None else after
    engine: AsyncEngine = request.app.state.engine
    start = None
    if cursor is not None:
        start = Position.parse(cursor)
        if start is None or not await _known(engine, start):
            raise CursorGoneError(
                "No stored event has this id: it is not one of ours, or the event is older "
                "than the retention period. Reconnect without a cursor."
            )
    hub: EventHub = request.app.state.event_hub
    if hub.position is None:
        raise UnavailableError("The event stream is not ready yet (no database); retry.")
    # Opened by a stream token: the stream ends when the token expires.
    ends_at: float | None = getattr(request.state, TOKEN_EXPIRES_STATE, None)
    retry_seconds: float = request.app.state.settings.events_retry_seconds
    # The reconnection delay in whole milliseconds (SSE's `retry:`), at least 1; none: the
    # client's own.
    retry = max(1, round(retry_seconds * 1000)) if retry_seconds > 0 else None
    response = EventSourceResponse(
        _messages(engine, hub, start, wanted, ends_at, retry),
        ping=request.app.state.settings.events_heartbeat_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    # HEAD: the stream's status and headers; no subscription is made, nothing is read.
    return without_body(response) if is_head(request) else response


def _parse_types(types: str | None, known: Sequence[str]) -> frozenset[str] | None:
    """The types asked for (of ``known``: the app's event types, which the domains that
    write events define)."""
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


async def _known(engine: AsyncEngine, position: Position) -> bool:
    async with engine.connect() as connection:
        return await event_exists(connection, position)


async def _messages(
    engine: AsyncEngine,
    hub: EventHub,
    start: Position | None,
    wanted: frozenset[str] | None,
    ends_at: float | None,
    retry: int | None = None,
) -> AsyncIterator[ServerSentEvent]:
    # Subscribed here, not in the endpoint: the generator's `finally` always unsubscribes.
    subscription = hub.subscribe()
    expiry = None
    if ends_at is not None:
        # Ending the subscription ends the stream after what is already queued.
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, ends_at - time.time()), subscription.end
        )
    try:
        if retry is not None:
            yield ServerSentEvent(retry=retry)  # a line of its own, before any event
        last = subscription.start if start is None else start
        # Replay what the client missed, up to where the live feed begins.
        while last < subscription.start:
            async with engine.connect() as connection:
                batch = await read_after(
                    connection, last, limit=_REPLAY_BATCH, until=subscription.start
                )
            for event in batch:
                if wanted is None or event.type in wanted:
                    yield ServerSentEvent(data=event.body, event=event.type, id=str(event.position))
                last = event.position
            if len(batch) < _REPLAY_BATCH:
                break
        async for event in subscription.events():
            if event.position <= last:  # the client had it already (from another instance)
                continue
            last = event.position
            if wanted is None or event.type in wanted:
                yield ServerSentEvent(data=event.body, event=event.type, id=str(event.position))
    finally:
        if expiry is not None:
            expiry.cancel()
        subscription.end()
