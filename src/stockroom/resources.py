"""What a process holds open, as one typed object, and the one way a request reaches it.

:func:`stockroom.stores.open_resources` opens a :class:`Resources` (the database and its
stores, the SQLAlchemy engine and sessions, the outbound HTTP client, the wake-ups of the
event log's readers, the key and token caches) and closes it when its block ends. The app's
lifespan and every command of the command line use it; the lifespan keeps it on the app,
where a handler finds it with :func:`resources_of`::

    item = await service.get_item(resources_of(request).stores.items, item_id)

This module knows the domains' types for the type checker only (under ``TYPE_CHECKING``),
so that every domain's router can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from stockroom.auth.service import Authenticator
    from stockroom.auth.tokens import SignedTokens
    from stockroom.events.hub import EventHub
    from stockroom.events.wakeup import Wakeup
    from stockroom.idempotency.service import InFlightKeys
    from stockroom.observability import Metrics
    from stockroom.ratelimit import RateLimiter
    from stockroom.settings import Settings
    from stockroom.stores import Stores

__all__ = ["Resources", "resources_of"]

# Where the lifespan keeps the process's resources: ``app.state.resources``.
STATE_KEY = "resources"


@dataclass(frozen=True, slots=True)
class Resources:
    """Everything one process opens once and shares between its requests and tasks."""

    settings: Settings
    # SQLAlchemy's engine and sessions: the event log's reads, keys and webhooks (admin
    # paths) and the background work. The hot paths go through ``stores``.
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # The configured database's connections and stores (``stockroom.stores``).
    stores: Stores[Any]
    # The process's one outbound HTTP client (webhook deliveries): timeouts on everything.
    http: httpx.AsyncClient
    # Wakes this process's event log readers (the stream's hub, the dispatcher) at a commit.
    wakeup: Wakeup
    event_hub: EventHub
    # Every event type the domains write (what GET /events?types= may ask for).
    event_types: Sequence[str]
    authenticator: Authenticator
    stream_tokens: SignedTokens
    # Tokens of GET /items/export; they share the stream tokens' cache of keys, so that
    # stream_tokens.forget(name) refuses both kinds.
    export_tokens: SignedTokens
    in_flight_keys: InFlightKeys
    # None: no rate limit (STOCKROOM_RATE_LIMIT unset).
    rate_limiter: RateLimiter | None
    # None in a process that serves no /metrics (the command line, ``stockroom worker``).
    metrics: Metrics | None


def resources_of(connection: HTTPConnection) -> Resources:
    """The resources of the app serving ``connection`` (a request): a plain call, the same
    on every route (it costs an attribute read; a dependency would cost a level of FastAPI's
    solving on every request)."""
    resources: Resources = connection.app.state.resources
    return resources
