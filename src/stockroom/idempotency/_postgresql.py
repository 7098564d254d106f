"""Idempotency keys on PostgreSQL: a transaction-scoped advisory lock per key, so that a
duplicate request in another process gets a 409 at once instead of waiting."""

from __future__ import annotations

import datetime as dt

import asyncpg

from stockroom.idempotency.service import in_progress
from stockroom.idempotency.store import KEY_TTL, StoredRecord

__all__ = ["PostgresKeyStore"]

_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# The expired record goes; the live one (if any) comes back, in one round trip. (The SELECT
# sees the table as before the DELETE, hence its own test of the expiry.)
_TAKE = """
WITH expired AS (
    DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND expires_at <= $3
)
SELECT method, path, request_hash, status_code, headers, body FROM idempotency_keys
WHERE owner = $1 AND key = $2 AND expires_at > $3"""
_SAVE = """
INSERT INTO idempotency_keys (owner, key, method, path, request_hash, status_code, headers,
                              body, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""


class PostgresKeyStore:
    async def lock(
        self, connection: asyncpg.Connection, owner: str, key: str, lock_id: int, now: dt.datetime
    ) -> StoredRecord | None:
        if not await connection.fetchval(_LOCK, lock_id):
            raise in_progress()
        record = await connection.fetchrow(_TAKE, owner, key, now)
        return None if record is None else StoredRecord(*record)

    async def save(
        self, connection: asyncpg.Connection, owner: str, key: str, record: StoredRecord
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        await connection.execute(
            _SAVE, owner, key, record.method, record.path, record.request_hash,
            record.status_code, record.headers, record.body, now, now + KEY_TTL,
        )  # fmt: skip
