"""``GET /events``: the live change stream (Server-Sent Events), resumable from the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from stockroom.auth.deps import READ, TOKEN_EXPIRES_STATE, ScopedRoute, accepts_stream_token
from stockroom.edge import is_head, without_body
from stockroom.events import service
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["router"]

router = APIRouter(
    route_class=ScopedRoute,
    tags=["events"],
    responses=problem_responses(401, 403, 422, 500, 503),
)


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
    resources = resources_of(request)
    settings = resources.settings
    cursor = last_event_id if last_event_id is not None else after
    stream = await service.open_stream(
        resources.engine,
        resources.event_hub,
        cursor,
        service.parse_types(types, resources.event_types),
        # Opened by a stream token: the stream ends when the token expires.
        getattr(request.state, TOKEN_EXPIRES_STATE, None),
        # The replay (only with a cursor) may read a replica.
        resources.stores.database.replica_engine() if cursor is not None else None,
    )
    # The reconnection delay in whole milliseconds (SSE's `retry:`), at least 1; none: the
    # client's own.
    retry_seconds = settings.events_retry_seconds
    retry = max(1, round(retry_seconds * 1000)) if retry_seconds > 0 else None
    response = EventSourceResponse(
        _messages(stream, retry),
        ping=settings.events_heartbeat_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    # HEAD: the stream's status and headers; no subscription is made, nothing is read.
    return without_body(response) if is_head(request) else response


async def _messages(stream: service.Stream, retry: int | None) -> AsyncIterator[ServerSentEvent]:
    """The stream as Server-Sent Events: ``id`` the cursor, ``event`` the type, ``data`` the
    body."""
    if retry is not None:
        yield ServerSentEvent(retry=retry)  # a line of its own, before any event
    async for event in stream.events():
        yield ServerSentEvent(data=event.body, event=event.type, id=str(event.position))
