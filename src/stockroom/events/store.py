"""Writing events on a store's own connection: ``_postgresql.py`` (asyncpg) and
``_sqlite.py`` (SQLAlchemy), picked once by ``Settings.backend`` (``stockroom.stores``).

Reading the log is the same SQL on both databases (``events.log``), so only writing has a
store; a domain's store for the same database takes this one to write the events of its
changes in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["EventStore"]

C = TypeVar("C", contravariant=True)  # the connection type of the store's database


class EventStore(Protocol[C]):
    async def append(self, connection: C, rows: Sequence[dict[str, Any]]) -> None:
        """Write events (made by ``events.log.event_row``) in ``connection``'s transaction."""
