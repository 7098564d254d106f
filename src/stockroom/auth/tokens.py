"""Signed tokens: short-lived credentials that each open one route and nothing else, where
a browser cannot send ``Authorization``. Two kinds: stream tokens open ``GET /events`` (a
browser's ``EventSource``), export tokens open ``GET /items/export`` (a plain download link).

A token is its kind's prefix (``st_``, ``et_``) + base64url(key id, expiry) + ``.`` +
base64url(HMAC-SHA256 of those). The HMAC key is derived from the kind's context and the API
key's stored hash (and ``STOCKROOM_EVENTS_TOKEN_SECRET`` when set), so any instance on the
same database verifies any instance's tokens, with no shared memory and no table of tokens,
and they survive a restart; a token of one kind never verifies as the other (another prefix,
another HMAC key). Verifying looks the key up by id (cached like keys, for
``STOCKROOM_AUTH_CACHE_SECONDS``, in one cache for both kinds): a token dies with its key.
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

__all__ = [
    "EXPORT_TOKEN",
    "STREAM_TOKEN",
    "TOKEN_KINDS",
    "TOKEN_PARAM",
    "TOKEN_PREFIX",
    "IssuedToken",
    "SignedTokens",
    "TokenKind",
]

TOKEN_PARAM = "token"
_PAYLOAD = struct.Struct(">QQ")  # key id, expiry (Unix seconds)
_MAX_KEY_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class TokenKind:
    """One kind of token: its prefix, its HMAC context, the route it opens and where a
    client gets another."""

    name: str
    prefix: str
    context: bytes
    opens: str
    renew: str


STREAM_TOKEN = TokenKind(
    "stream", "st_", b"stockroom stream token v1\x00", "GET /events", "POST /events/tokens"
)
EXPORT_TOKEN = TokenKind(
    "export",
    "et_",
    b"stockroom export token v1\x00",
    "GET /items/export",
    "POST /items/export/tokens",
)
TOKEN_KINDS = (STREAM_TOKEN, EXPORT_TOKEN)
TOKEN_PREFIX = STREAM_TOKEN.prefix


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class _Key:
    principal: Principal
    key_hash: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Keys:
    """API keys looked up by id, trusted for ``ttl`` seconds: one cache for every kind of
    token, so that forgetting a key (revoked here) refuses its tokens of every kind."""

    MAX_ENTRIES = 10_000

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self.sessions = sessions
        self._ttl = ttl
        # key id -> (the active key, or None for an unknown or revoked one; expiry)
        self._cache: OrderedDict[int, tuple[_Key | None, float]] = OrderedDict()

    async def get(self, key_id: int) -> _Key | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.sessions() as session:
            record = await session.scalar(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            )
        key = None
        if record is not None:
            key = _Key(Principal(record.name, grants(scopes_of(record))), record.key_hash)
        if self._ttl > 0:
            self._cache[key_id] = (key, now + self._ttl)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
        return key

    def forget(self, name: str) -> None:
        for key_id, (key, _) in list(self._cache.items()):
            if key is not None and key.principal.name == name:
                del self._cache[key_id]


class SignedTokens:
    """Issues and verifies tokens of one ``kind`` (stream tokens unless told). ``lifetime``
    is in seconds; ``ttl`` is how long a looked-up key is trusted without asking the
    database again. :meth:`of_kind` makes the issuer of another kind, sharing the cache of
    keys."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        lifetime: float,
        ttl: float,
        secret: str = "",
        kind: TokenKind = STREAM_TOKEN,
        keys: _Keys | None = None,
    ) -> None:
        self._sessions = sessions
        self.lifetime = lifetime
        self._ttl = ttl
        self._secret = secret
        self.kind = kind
        self._keys = keys if keys is not None else _Keys(sessions, ttl)

    def of_kind(self, kind: TokenKind, *, lifetime: float) -> SignedTokens:
        """Tokens of ``kind``, with the same secret and the same cache of keys."""
        return SignedTokens(
            self._sessions,
            lifetime=lifetime,
            ttl=self._ttl,
            secret=self._secret,
            kind=kind,
            keys=self._keys,
        )

    def _signing_key(self, key_hash: str) -> bytes:
        return hmac.digest(
            self._secret.encode(), self.kind.context + key_hash.encode(), hashlib.sha256
        )

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
            token=f"{self.kind.prefix}{_b64(payload)}.{_b64(mac)}",
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )

    async def verify(self, token: str) -> tuple[Principal, float]:
        """The principal of a valid token and its expiry (Unix seconds); else 401."""
        kind = self.kind
        parsed = _parse(token, kind.prefix)
        if parsed is None:
            raise UnauthorizedError(f"The {kind.name} token is not valid.")
        key_id, expires, mac = parsed
        if expires <= time.time():
            raise UnauthorizedError(f"The {kind.name} token has expired: ask {kind.renew} again.")
        key = await self._keys.get(key_id)
        payload = _PAYLOAD.pack(key_id, expires)
        expected = (
            hmac.digest(self._signing_key(key.key_hash), payload, hashlib.sha256) if key else b""
        )
        if key is None or not hmac.compare_digest(mac, expected):
            raise UnauthorizedError(
                f"The {kind.name} token is not valid, or its API key was revoked."
            )
        return key.principal, float(expires)

    def forget(self, name: str) -> None:
        """Drop the cached key called ``name`` (after revoking it here): its tokens, of
        every kind, fail at once on this instance."""
        self._keys.forget(name)


def _parse(token: str, prefix: str) -> tuple[int, int, bytes] | None:
    if not token.startswith(prefix) or len(token) > 200:
        return None
    payload_text, _, mac_text = token.removeprefix(prefix).partition(".")
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
