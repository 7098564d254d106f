"""Idempotency keys on SQLite: the write transaction holds the database's write lock, so a
key needs no lock of its own (a duplicate from another process waits, then replays)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from stockroom.idempotency.models import IdempotencyRecord
from stockroom.idempotency.store import KEY_TTL, StoredRecord

__all__ = ["SqliteKeyStore"]
_RECORD_COLUMNS = (
    IdempotencyRecord.method,
    IdempotencyRecord.path,
    IdempotencyRecord.request_hash,
    IdempotencyRecord.status_code,
    IdempotencyRecord.headers,
    IdempotencyRecord.body,
)


class SqliteKeyStore:
    async def lock(
        self, connection: AsyncConnection, owner: str, key: str, lock_id: int, now: dt.datetime
    ) -> StoredRecord | None:
        this = (IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
        await connection.execute(
            delete(IdempotencyRecord).where(*this, IdempotencyRecord.expires_at <= now)
        )
        row = (await connection.execute(select(*_RECORD_COLUMNS).where(*this))).first()
        return None if row is None else StoredRecord(*row)

    async def save(
        self, connection: AsyncConnection, owner: str, key: str, record: StoredRecord
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        await connection.execute(
            insert(IdempotencyRecord).values(
                owner=owner, key=key, method=record.method, path=record.path,
                request_hash=record.request_hash, status_code=record.status_code,
                headers=record.headers, body=record.body, created_at=now,
                expires_at=now + KEY_TTL,
            )
        )  # fmt: skip
