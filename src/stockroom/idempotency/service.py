"""Stored first answers, Stripe's semantics, as one unit of work.

A request with an ``Idempotency-Key`` runs in one write transaction that (1) takes a lock on
the key, (2) looks for a stored answer, and either replays it or (3) applies the effect and
stores the answer, and commits both together (:meth:`UnitOfWork.run`). A crash can
therefore never leave an effect without its record, nor a record without its effect. Only
successful (2xx) answers are stored: an error applied nothing, so running the request
again is safe. The effects (creating an item, an adjustment, an import) know nothing of
keys: they take the transaction's connection and return a result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson
from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.database import Database
from stockroom.db import utcnow
from stockroom.errors import ConflictError, InvalidRequestError
from stockroom.idempotency.models import IdempotencyRecord
from stockroom.idempotency.store import KeyStore, StoredRecord

__all__ = [
    "IdempotencyInProgressError",
    "InFlightKeys",
    "Scope",
    "StoredAnswer",
    "UnitOfWork",
    "in_progress",
    "purge_expired",
    "request_hash",
]

T = TypeVar("T")
C = TypeVar("C")  # the connection type of the database written to


class IdempotencyInProgressError(ConflictError):
    slug, title = "idempotency-key-in-use", "Request in progress"


@dataclass(frozen=True, slots=True)
class Scope:
    """Who used which key for which request. ``body_hash`` gives the request's hash once
    the body has been read (an import's body streams through the effect first)."""

    owner: str
    key: str
    method: str
    path: str
    body_hash: Callable[[], Awaitable[str]]

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
    def json(cls, status_code: int, body: bytes, **headers: str) -> StoredAnswer:
        """A JSON answer, serialised once: the first response and every replay send these
        bytes."""
        return cls(status_code, {"Content-Type": "application/json", **headers}, body)


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
            raise in_progress()
        self._keys.add(marker)
        try:
            yield
        finally:
            self._keys.discard(marker)


class UnitOfWork(Generic[C]):
    """One write transaction for an effect, once per idempotency key (when there is one)."""

    def __init__(
        self,
        database: Database[C],
        keys: KeyStore[C],
        in_flight: InFlightKeys,
        scope: Scope | None,
    ) -> None:
        self._database = database
        self._keys = keys
        self._in_flight = in_flight
        self.scope = scope

    async def run(
        self, effect: Callable[[C], Awaitable[T]], render: Callable[[T], StoredAnswer]
    ) -> tuple[StoredAnswer, bool]:
        """Apply ``effect(connection)`` in a new write transaction and ``render`` its
        result, or replay the key's stored answer; returns the answer and whether it was
        a replay."""
        scope = self.scope
        if scope is None:
            return render(await self._database.run(effect)), False

        async def once(connection: C) -> tuple[StoredAnswer | None, StoredRecord | None]:
            stored = await self._keys.lock(
                connection, scope.owner, scope.key, scope.lock_id, utcnow()
            )
            if stored is not None:
                return None, stored
            answer = render(await effect(connection))
            await self._keys.save(connection, scope.owner, scope.key, await _record(scope, answer))
            return answer, None

        with self._in_flight.hold(scope):
            answer, stored = await self._database.run(once)
            if answer is not None:
                return answer, False
            assert stored is not None
            return _replay(stored, scope.method, scope.path, await scope.body_hash()), True


async def _record(scope: Scope, answer: StoredAnswer) -> StoredRecord:
    return StoredRecord(
        method=scope.method,
        path=scope.path,
        request_hash=await scope.body_hash(),
        status_code=answer.status_code,
        headers=orjson.dumps(answer.headers).decode(),
        body=answer.body,
    )


def _replay(record: StoredRecord, method: str, path: str, body_hash: str) -> StoredAnswer:
    """The stored answer, if this is the same request as the record's; else 422."""
    if (record.method, record.path, record.request_hash) != (method, path, body_hash):
        raise InvalidRequestError(
            "This Idempotency-Key was already used with a different request "
            f"({record.method} {record.path} with another body); use a new key.",
            loc=("header", "Idempotency-Key"),
        )
    return StoredAnswer(record.status_code, orjson.loads(record.headers), record.body)


def request_hash(body: bytes) -> str:
    """Hash of the JSON body, insensitive to key order and white space."""
    try:
        canonical = orjson.dumps(orjson.loads(body or b"null"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


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


def in_progress() -> IdempotencyInProgressError:
    return IdempotencyInProgressError(
        "A request with this Idempotency-Key is still in progress; retry after it finishes.",
        headers={"Retry-After": "1"},
    )
