"""API keys: create, list, revoke, and verify a presented key.

Keys are ``sr_`` + 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits), and only
their SHA-256 is stored. A slow password hash (bcrypt, argon2) protects *low-entropy*
secrets against guessing after a database leak; a 256-bit random key cannot be guessed from
its hash, so one fast hash is enough, and it lets a key be found by an indexed lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stockroom.auth.models import ApiKey
from stockroom.db import begin_write, is_unique_violation, utcnow
from stockroom.errors import DuplicateError, NotFoundError, UnauthorizedError

__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "SCOPES",
    "Authenticator",
    "Principal",
    "create_key",
    "find_principal",
    "hash_key",
    "list_keys",
    "revoke_key",
    "scopes_of",
]

KEY_PREFIX = "sr_"
SCOPES = ("read", "write", "admin")
# What each scope grants: admin implies write and read, write implies read.
_IMPLIED = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name and everything its scopes grant."""

    name: str
    granted: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.granted


def grants(scopes: Iterable[str]) -> frozenset[str]:
    return frozenset().union(*(_IMPLIED[s] for s in scopes))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _principal(record: ApiKey) -> Principal:
    return Principal(record.name, grants(_split(record.scopes)))


def _split(scopes: str) -> list[str]:
    return [s for s in scopes.split(",") if s]


async def create_key(session: AsyncSession, name: str, scopes: Sequence[str]) -> tuple[ApiKey, str]:
    """A new key; returns its record and the secret, which is not stored."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name,
        key_hash=hash_key(secret),
        scopes=",".join(dict.fromkeys(scopes)),
        created_at=utcnow(),
        revoked_at=None,
    )
    await begin_write(session)
    session.add(record)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        if is_unique_violation(exc):
            raise DuplicateError(f"An API key named {name!r} already exists.") from None
        raise
    return record, secret


async def list_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).order_by(ApiKey.id))).all()


async def revoke_key(session: AsyncSession, name: str) -> ApiKey:
    """Revoke the key called ``name`` (again is fine); 404 if there is none."""
    await begin_write(session)
    record = await session.scalar(select(ApiKey).where(ApiKey.name == name))
    if record is None:
        raise NotFoundError(f"No API key named {name!r}.")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    await session.commit()
    return record


async def find_principal(session: AsyncSession, presented: str) -> Principal | None:
    """The principal of an active key, or None for an unknown or revoked one."""
    digest = hash_key(presented)
    record = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    )
    # The row was found by its hash; compare again in constant time so that no answer
    # depends on how much of a guessed value matched.
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        return None
    return _principal(record)


def scopes_of(record: ApiKey) -> list[str]:
    return _split(record.scopes)


class Authenticator:
    """Verifies presented keys, with a short in-process cache so that a request does not pay
    a database round trip for its key. A revoked key is refused by every instance within
    ``ttl`` seconds (at once by the instance that revoked it)."""

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        enabled: bool,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self.enabled = enabled
        self._ttl = ttl
        self._clock = clock  # seconds; a test moves it on instead of waiting
        # hash of the presented key -> (principal or None for unknown/revoked, expiry)
        self._cache: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        # hash of the presented key -> the lookup under way for it
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, presented: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise UnauthorizedError("An API key is required: send 'Authorization: Bearer <key>'.")
        digest = hash_key(presented)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await self._look_up(digest, presented, now)
        if principal is None:
            raise UnauthorizedError("The API key is unknown or revoked.")
        return principal

    async def _look_up(self, digest: str, presented: str, now: float) -> Principal | None:
        """One lookup per key at a time: when its cache entry expires under load, the
        requests that find it expired wait for the same query instead of each sending
        their own (which would queue them all on the pool, every ``ttl`` seconds)."""
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._query(presented))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _done: self._pending.pop(digest, None))
        principal = await asyncio.shield(pending)
        self._remember(digest, principal, now)
        return principal

    async def _query(self, presented: str) -> Principal | None:
        async with self._sessions() as session:
            return await find_principal(session, presented)

    def forget(self, name: str) -> None:
        """Drop cached entries of the key called ``name`` (after revoking it here)."""
        for digest, (principal, _) in list(self._cache.items()):
            if principal is not None and principal.name == name:
                del self._cache[digest]

    def _remember(self, digest: str, principal: Principal | None, now: float) -> None:
        if self._ttl <= 0:
            return
        self._cache[digest] = (principal, now + self._ttl)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.MAX_ENTRIES:
            self._cache.popitem(last=False)


# Who calls when authentication is off: everything is allowed.
ANONYMOUS = Principal("", grants(SCOPES))
