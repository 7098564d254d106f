"""The stores of a process, put together once in the lifespan for the configured database:
the one place that picks between the ``_postgresql`` and ``_sqlite`` modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from stockroom.database import Database
from stockroom.database._postgresql import PostgresDatabase
from stockroom.database._postgresql import create_engine as create_postgresql_engine
from stockroom.database._postgresql import unusable_reason as postgresql_unusable_reason
from stockroom.database._sqlite import SqliteDatabase
from stockroom.database._sqlite import create_engine as create_sqlite_engine
from stockroom.database._sqlite import unusable_reason as sqlite_unusable_reason
from stockroom.events._postgresql import PostgresEventStore
from stockroom.events._sqlite import SqliteEventStore
from stockroom.events.store import EventStore
from stockroom.idempotency._postgresql import PostgresKeyStore
from stockroom.idempotency._sqlite import SqliteKeyStore
from stockroom.idempotency.store import KeyStore
from stockroom.items._postgresql import PostgresItemStore
from stockroom.items._sqlite import SqliteItemStore
from stockroom.items.store import ItemStore
from stockroom.items.writer import ItemWriter
from stockroom.settings import Backend, Settings

__all__ = ["Stores", "create_engine", "open_stores", "unusable_reason"]


@dataclass(frozen=True, slots=True)
class Stores:
    database: Database
    items: ItemStore
    events: EventStore
    keys: KeyStore
    writer: ItemWriter


def _postgresql_stores(
    settings: Settings, _engine: AsyncEngine, on_commit: Callable[[], None]
) -> Stores:
    database = PostgresDatabase(settings, on_commit=on_commit)
    events = PostgresEventStore()
    items = PostgresItemStore(database, events)
    return Stores(database, items, events, PostgresKeyStore(), ItemWriter(items, events))


def _sqlite_stores(
    _settings: Settings, engine: AsyncEngine, on_commit: Callable[[], None]
) -> Stores:
    database = SqliteDatabase(engine, on_commit=on_commit)
    events = SqliteEventStore()
    items = SqliteItemStore(database, events)
    return Stores(database, items, events, SqliteKeyStore(), ItemWriter(items, events))


_BUILDERS: dict[Backend, Callable[[Settings, AsyncEngine, Callable[[], None]], Stores]] = {
    "postgresql": _postgresql_stores,
    "sqlite": _sqlite_stores,
}


def open_stores(
    settings: Settings, engine: AsyncEngine, *, on_commit: Callable[[], None]
) -> Stores:
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
