"""Stored first answers, Stripe's semantics.

A request with an ``Idempotency-Key`` runs in one write transaction that (1) takes a lock on
the key, (2) looks for a stored answer, and either replays it or (3) applies the effect and
stores the answer, and commits both together. A crash can therefore never leave an effect
without its record, nor a record without its effect. Only successful (2xx) answers are
stored: an error applied nothing, so running the request again is safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson
from pydantic import BaseModel
from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import on_postgresql, utcnow
from stockroom.errors import ConflictError, InvalidRequestError
from stockroom.idempotency.models import IdempotencyRecord

__all__ = [
    "KEY_TTL",
    "IdempotencyInProgressError",
    "InFlightKeys",
    "Scope",
    "StoredAnswer",
    "answer_for",
    "lock",
    "purge_expired",
    "request_hash",
    "save",
    "take",
]

KEY_TTL = dt.timedelta(hours=24)


class IdempotencyInProgressError(ConflictError):
    slug, title = "idempotency-key-in-use", "Request in progress"


@dataclass(frozen=True, slots=True)
class Scope:
    """Who used which key for which request."""

    owner: str
    key: str
    method: str
    path: str
    request_hash: str

    @property
    def lock_id(self) -> int:
        digest = hashlib.sha256(f"{self.owner}\x00{self.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def json(cls, status_code: int, body: BaseModel, **headers: str) -> StoredAnswer:
        """A JSON answer, serialised once: the first response and every replay send these
        bytes."""
        return cls(
            status_code,
            {"Content-Type": "application/json", **headers},
            body.model_dump_json().encode(),
        )


@dataclass
class InFlightKeys:
    """Keys whose first request is running in this process: a duplicate gets a 409 at once.

    Across processes, PostgreSQL's advisory lock does the same; SQLite runs one writer at a
    time, so there a duplicate from another process waits and then replays.
    """

    _keys: set[tuple[str, str]] = field(default_factory=set)

    @contextmanager
    def hold(self, scope: Scope) -> Iterator[None]:
        marker = (scope.owner, scope.key)
        if marker in self._keys:
            raise _in_progress()
        self._keys.add(marker)
        try:
            yield
        finally:
            self._keys.discard(marker)


def request_hash(body: bytes) -> str:
    """Hash of the JSON body, insensitive to key order and white space."""
    try:
        canonical = orjson.dumps(orjson.loads(body or b"null"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


async def take(session: AsyncSession, scope: Scope) -> StoredAnswer | None:
    """Lock the key for this transaction and return its stored answer, if any.

    Must run first in the write transaction (after ``begin_write``).
    """
    record = await lock(session, scope)
    return None if record is None else answer_for(record, scope)


async def lock(session: AsyncSession, scope: Scope) -> IdempotencyRecord | None:
    """Lock the key (owner and key; the request hash may not be known yet) for this
    transaction; return its unexpired record, if any."""
    if on_postgresql(session):
        locked = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": scope.lock_id}
        )
        if not locked:
            raise _in_progress()
    now = utcnow()
    await session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.owner == scope.owner,
            IdempotencyRecord.key == scope.key,
            IdempotencyRecord.expires_at <= now,
        )
    )
    return await session.get(IdempotencyRecord, (scope.owner, scope.key))


def answer_for(record: IdempotencyRecord, scope: Scope) -> StoredAnswer:
    """The stored answer, if ``scope`` is the same request as the record's; else 422."""
    if (record.method, record.path, record.request_hash) != (
        scope.method,
        scope.path,
        scope.request_hash,
    ):
        raise InvalidRequestError(
            "This Idempotency-Key was already used with a different request "
            f"({record.method} {record.path} with another body); use a new key.",
            loc=("header", "Idempotency-Key"),
        )
    return StoredAnswer(record.status_code, orjson.loads(record.headers), record.body)


async def save(session: AsyncSession, scope: Scope, answer: StoredAnswer) -> None:
    """Store the answer in the current transaction (committed with the effect)."""
    now = utcnow()
    session.add(
        IdempotencyRecord(
            owner=scope.owner,
            key=scope.key,
            method=scope.method,
            path=scope.path,
            request_hash=scope.request_hash,
            status_code=answer.status_code,
            headers=orjson.dumps(answer.headers).decode(),
            body=answer.body,
            created_at=now,
            expires_at=now + KEY_TTL,
        )
    )
    await session.flush()


async def purge_expired(session: AsyncSession, *, batch: int = 1000) -> int:
    """Delete up to ``batch`` expired records in one short transaction; returns how many."""
    expired = select(IdempotencyRecord.owner, IdempotencyRecord.key).where(
        IdempotencyRecord.expires_at <= utcnow()
    )
    # A look without the lock first: on SQLite the lock is the database's write lock.
    if (await session.execute(expired.limit(1))).first() is None:
        await session.rollback()
        return 0
    result = await session.execute(
        delete(IdempotencyRecord).where(
            tuple_(IdempotencyRecord.owner, IdempotencyRecord.key).in_(expired.limit(batch))
        )
    )
    await session.commit()
    return int(getattr(result, "rowcount", 0))


def _in_progress() -> IdempotencyInProgressError:
    return IdempotencyInProgressError(
        "A request with this Idempotency-Key is still in progress; retry after it finishes.",
        headers={"Retry-After": "1"},
    )
