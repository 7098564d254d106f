"""Locking a key and keeping its first answer, per database: ``_postgresql.py`` (asyncpg,
an advisory lock per key) and ``_sqlite.py`` (SQLAlchemy Core; the database's write lock
already serialises writers). Picked once by ``Settings.backend`` (``stockroom.stores``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["KEY_TTL", "KeyStore", "StoredRecord"]

KEY_TTL = dt.timedelta(hours=24)
C = TypeVar("C", contravariant=True)  # the connection type of the store's database


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """The first request made with a key, and its answer."""

    method: str
    path: str
    request_hash: str
    status_code: int
    headers: str  # JSON object of the headers to replay
    body: bytes


class KeyStore(Protocol[C]):
    async def lock(
        self, connection: C, owner: str, key: str, lock_id: int, now: dt.datetime
    ) -> StoredRecord | None:
        """Lock the key for the transaction (``IdempotencyInProgressError`` if another
        transaction holds it); drop its record if expired; return the record if any.
        Must run first in the write transaction."""

    async def save(self, connection: C, owner: str, key: str, record: StoredRecord) -> None:
        """Store the first answer in the transaction (committed with the effect)."""
