"""Events on SQLite: written with SQLAlchemy Core on the transaction's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from stockroom.events import log

__all__ = ["SqliteEventStore"]


class SqliteEventStore:
    async def append(self, connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        await log.append(connection, rows)
