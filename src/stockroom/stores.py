"""Where a process's resources are put together: the one place that picks between the
``_postgresql`` and ``_sqlite`` modules (every store of every domain, by
``Settings.backend``), and :func:`open_resources`, which the lifespan and every command of
the command line open once and close at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stockroom.auth.service import Authenticator
from stockroom.auth.tokens import EXPORT_TOKEN, SignedTokens
from stockroom.database import Database
from stockroom.database._postgresql import PostgresDatabase
from stockroom.database._postgresql import create_engine as create_postgresql_engine
from stockroom.database._postgresql import unusable_reason as postgresql_unusable_reason
from stockroom.database._sqlite import SqliteDatabase
from stockroom.database._sqlite import create_engine as create_sqlite_engine
from stockroom.database._sqlite import unusable_reason as sqlite_unusable_reason
from stockroom.db import create_session_factory
from stockroom.events._postgresql import PostgresEventStore
from stockroom.events._sqlite import SqliteEventStore
from stockroom.events.hub import EventHub
from stockroom.events.store import EventStore
from stockroom.events.wakeup import SESSION_WAKEUP, Wakeup
from stockroom.idempotency._postgresql import PostgresKeyStore
from stockroom.idempotency._sqlite import SqliteKeyStore
from stockroom.idempotency.service import InFlightKeys
from stockroom.idempotency.store import KeyStore
from stockroom.items._postgresql import PostgresItemStore
from stockroom.items._sqlite import SqliteItemStore
from stockroom.items.event_types import EVENT_TYPES
from stockroom.items.store import ItemStore
from stockroom.items.writer import ItemWriter
from stockroom.observability import Metrics
from stockroom.ratelimit import RateLimiter
from stockroom.resources import Resources
from stockroom.settings import Backend, Settings
from stockroom.webhooks._postgresql import PostgresDeliveryStore
from stockroom.webhooks._sqlite import SqliteDeliveryStore
from stockroom.webhooks.dispatcher import create_http_client
from stockroom.webhooks.store import DeliveryStore

__all__ = ["Stores", "create_engine", "open_resources", "open_stores", "unusable_reason"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Stores(Generic[C]):
    """The stores of one database, whose connections are ``C`` (asyncpg's on PostgreSQL,
    SQLAlchemy's ``AsyncConnection`` on SQLite): the type checker sees that each store
    takes the connections its database hands out."""

    database: Database[C]
    items: ItemStore[C]
    events: EventStore[C]
    keys: KeyStore[C]
    writer: ItemWriter[C]
    deliveries: DeliveryStore


def _postgresql_stores(
    settings: Settings, _engine: AsyncEngine, on_commit: Callable[[], None]
) -> Stores[asyncpg.Connection]:
    database = PostgresDatabase(settings, on_commit=on_commit)
    events = PostgresEventStore()
    items = PostgresItemStore(database, events, export_stall=settings.export_stall_timeout)
    return Stores(
        database, items, events, PostgresKeyStore(), ItemWriter(items, events),
        PostgresDeliveryStore(),
    )  # fmt: skip


def _sqlite_stores(
    _settings: Settings, engine: AsyncEngine, on_commit: Callable[[], None]
) -> Stores[AsyncConnection]:
    database = SqliteDatabase(engine, on_commit=on_commit)
    events = SqliteEventStore()
    items = SqliteItemStore(database, events)
    return Stores(
        database, items, events, SqliteKeyStore(), ItemWriter(items, events),
        SqliteDeliveryStore(),
    )  # fmt: skip


_BUILDERS: dict[Backend, Callable[[Settings, AsyncEngine, Callable[[], None]], Stores[Any]]] = {
    "postgresql": _postgresql_stores,
    "sqlite": _sqlite_stores,
}


def open_stores(
    settings: Settings, engine: AsyncEngine, *, on_commit: Callable[[], None]
) -> Stores[Any]:
    """``on_commit`` runs after each committed write (it wakes the event log's readers)."""
    return _BUILDERS[settings.backend](settings, engine, on_commit)


_ENGINES: dict[Backend, Callable[[Settings], AsyncEngine]] = {
    "postgresql": create_postgresql_engine,
    "sqlite": create_sqlite_engine,
}


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's one SQLAlchemy engine, for the configured database."""
    return _ENGINES[settings.backend](settings)


_UNUSABLE: dict[Backend, Callable[[Settings], str | None]] = {
    "postgresql": postgresql_unusable_reason,
    "sqlite": sqlite_unusable_reason,
}


def unusable_reason(settings: Settings) -> str | None:
    """Why the configured database cannot be used, if that shows before connecting."""
    return _UNUSABLE[settings.backend](settings)


@asynccontextmanager
async def open_resources(
    settings: Settings, *, metrics: Metrics | None = None
) -> AsyncIterator[Resources]:
    """Everything a process needs, opened for the block and closed after it (in the
    opposite order). Nothing here starts background work: that is ``stockroom.background``'s.
    ``metrics``: the app's, where /metrics is served."""
    engine = create_engine(settings)
    wakeup = Wakeup(settings.events_poll_seconds)
    # A commit that wrote events wakes this process's readers at once.
    sessions = create_session_factory(engine, info={SESSION_WAKEUP: wakeup.wake})
    stores = open_stores(settings, engine, on_commit=wakeup.wake)
    limit = settings.rate_limit_item
    limiter = RateLimiter(limit, settings.redis_url) if limit else None
    stream_tokens = SignedTokens(
        sessions,
        lifetime=settings.events_token_seconds,
        ttl=settings.auth_cache_seconds,
        secret=settings.events_token_secret,
    )
    try:
        await stores.database.start()
        async with create_http_client(settings) as http:
            yield Resources(
                settings=settings,
                engine=engine,
                sessions=sessions,
                stores=stores,
                http=http,
                wakeup=wakeup,
                event_hub=EventHub(engine, wakeup, queue_size=settings.events_stream_buffer),
                event_types=EVENT_TYPES,
                authenticator=Authenticator(
                    sessions, enabled=settings.auth, ttl=settings.auth_cache_seconds
                ),
                stream_tokens=stream_tokens,
                export_tokens=stream_tokens.of_kind(
                    EXPORT_TOKEN, lifetime=settings.export_token_seconds
                ),
                in_flight_keys=InFlightKeys(),
                rate_limiter=limiter,
                metrics=metrics,
            )
    finally:
        if limiter is not None:
            await limiter.close()
        await stores.database.close()
        await engine.dispose()
