"""Stream tokens: a short-lived credential that opens ``GET /events`` and nothing else, for a
browser's ``EventSource`` (which cannot send ``Authorization``).

A token is ``st_`` + base64url(key id, expiry) + ``.`` + base64url(HMAC-SHA256 of those).
The HMAC key is derived from the API key's stored hash (and ``STOCKROOM_EVENTS_TOKEN_SECRET``
when set), so any instance on the same database verifies any instance's tokens, with no
shared memory and no table of tokens, and they survive a restart. Verifying looks the key
up by id (cached like keys, for ``STOCKROOM_AUTH_CACHE_SECONDS``): a token dies with its key.
See docs/decisions.md, "Stream tokens".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stockroom.auth.models import ApiKey
from stockroom.auth.service import Principal, grants, scopes_of
from stockroom.errors import UnauthorizedError

__all__ = ["TOKEN_PARAM", "TOKEN_PREFIX", "IssuedToken", "StreamTokens"]

TOKEN_PREFIX = "st_"
TOKEN_PARAM = "token"
_PAYLOAD = struct.Struct(">QQ")  # key id, expiry (Unix seconds)
_CONTEXT = b"stockroom stream token v1\x00"
_MAX_KEY_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class _Key:
    principal: Principal
    signing_key: bytes


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Issues and verifies stream tokens. ``lifetime`` is in seconds; ``ttl`` is how long a
    looked-up key is trusted without asking the database again."""

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        lifetime: float,
        ttl: float,
        secret: str = "",
    ) -> None:
        self._sessions = sessions
        self.lifetime = lifetime
        self._ttl = ttl
        self._secret = secret.encode()
        # key id -> (the active key, or None for an unknown or revoked one; expiry)
        self._cache: OrderedDict[int, tuple[_Key | None, float]] = OrderedDict()

    def _signing_key(self, key_hash: str) -> bytes:
        return hmac.digest(self._secret, _CONTEXT + key_hash.encode(), hashlib.sha256)

    async def issue(self, principal: Principal, *, anonymous: bool = False) -> IssuedToken:
        """A token for the caller's key (which just authenticated, so it is active). With
        authentication off (``anonymous``) the token is made the same way for key id 0; it
        is never checked, as nothing is."""
        key_id, key_hash = 0, ""
        if not anonymous:
            async with self._sessions() as session:
                record = await session.scalar(
                    select(ApiKey).where(ApiKey.name == principal.name, ApiKey.revoked_at.is_(None))
                )
            if record is None:  # revoked between its check and now
                raise UnauthorizedError("The API key is unknown or revoked.")
            key_id, key_hash = record.id, record.key_hash
        expires = int(time.time() + self.lifetime)
        payload = _PAYLOAD.pack(key_id, expires)
        mac = hmac.digest(self._signing_key(key_hash), payload, hashlib.sha256)
        return IssuedToken(
            token=f"{TOKEN_PREFIX}{_b64(payload)}.{_b64(mac)}",
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )

    async def verify(self, token: str) -> tuple[Principal, float]:
        """The principal of a valid token and its expiry (Unix seconds); else 401."""
        parsed = _parse(token)
        if parsed is None:
            raise UnauthorizedError("The stream token is not valid.")
        key_id, expires, mac = parsed
        if expires <= time.time():
            raise UnauthorizedError("The stream token has expired: ask POST /events/tokens again.")
        key = await self._key(key_id)
        payload = _PAYLOAD.pack(key_id, expires)
        expected = hmac.digest(key.signing_key, payload, hashlib.sha256) if key else b""
        if key is None or not hmac.compare_digest(mac, expected):
            raise UnauthorizedError("The stream token is not valid, or its API key was revoked.")
        return key.principal, float(expires)

    async def _key(self, key_id: int) -> _Key | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._sessions() as session:
            record = await session.scalar(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            )
        key = None
        if record is not None:
            principal = Principal(record.name, grants(scopes_of(record)))
            key = _Key(principal, self._signing_key(record.key_hash))
        if self._ttl > 0:
            self._cache[key_id] = (key, now + self._ttl)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
        return key

    def forget(self, name: str) -> None:
        """Drop the cached key called ``name`` (after revoking it here): its tokens fail at
        once on this instance."""
        for key_id, (key, _) in list(self._cache.items()):
            if key is not None and key.principal.name == name:
                del self._cache[key_id]


def _parse(token: str) -> tuple[int, int, bytes] | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    payload_text, _, mac_text = token.removeprefix(TOKEN_PREFIX).partition(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    if len(payload) != _PAYLOAD.size or len(mac) != hashlib.sha256().digest_size:
        return None
    key_id, expires = _PAYLOAD.unpack(payload)
    if not 0 < key_id <= _MAX_KEY_ID:  # never looked up: the column is a 32-bit integer
        return None
    return key_id, expires, mac
