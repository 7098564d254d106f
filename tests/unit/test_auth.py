"""API key checks and stream tokens (auth.service, auth.tokens) over a stand-in for the
database: scopes, the key cache, one lookup per key at a time, and tokens that verify only
as issued."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

import pytest

from stockroom.auth.models import ApiKey
from stockroom.auth.service import ANONYMOUS, Authenticator, Principal, grants, hash_key
from stockroom.auth.tokens import TOKEN_PREFIX, SignedTokens
from stockroom.errors import UnauthorizedError

SECRET = "sr_" + "k" * 43


class _Sessions:
    """Stands in for an ``async_sessionmaker``: every query answers ``record`` (None: no
    active key), once ``gate`` is open; ``queries`` counts them, ``asked`` is set by the
    first."""

    def __init__(self, record: ApiKey | None) -> None:
        self.record = record
        self.queries = 0
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    def __call__(self) -> _Sessions:
        return self

    async def __aenter__(self) -> _Sessions:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def scalar(self, _statement: Any) -> ApiKey | None:
        self.queries += 1
        self.asked.set()
        await self.gate.wait()
        return self.record


def _key(name: str = "alice", scopes: str = "read", key_id: int = 5) -> ApiKey:
    return ApiKey(
        id=key_id,
        name=name,
        key_hash=hash_key(SECRET),
        scopes=scopes,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        revoked_at=None,
    )


def _tokens(sessions: _Sessions, **options: Any) -> SignedTokens:
    values: dict[str, Any] = {"lifetime": 3600.0, "ttl": 60.0, **options}
    return SignedTokens(sessions, **values)  # type: ignore[arg-type]


def _authenticator(sessions: _Sessions, ttl: float = 60.0) -> Authenticator:
    return Authenticator(sessions, enabled=True, ttl=ttl)  # type: ignore[arg-type]


# --- Scopes and key hashes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "granted"),
    [
        ([], set()),
        (["read"], {"read"}),
        (["write"], {"read", "write"}),
        (["admin"], {"read", "write", "admin"}),
        (["read", "write"], {"read", "write"}),
    ],
)
def test_admin_implies_write_and_write_implies_read(scopes: list[str], granted: set[str]) -> None:
    assert grants(scopes) == granted


def test_anonymous_may_do_everything() -> None:
    assert all(ANONYMOUS.can(scope) for scope in ("read", "write", "admin"))


def test_a_key_is_stored_as_its_sha256() -> None:
    assert hash_key(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()


# --- Authenticator ----------------------------------------------------------------------------


async def test_a_known_key_is_its_principal_and_an_unknown_one_is_401() -> None:
    authenticator = _authenticator(_Sessions(_key(scopes="write")))
    assert await authenticator.authenticate(SECRET) == Principal("alice", grants(["write"]))
    with pytest.raises(UnauthorizedError, match="unknown or revoked"):
        await authenticator.authenticate(SECRET + "x")
    with pytest.raises(UnauthorizedError, match="An API key is required"):
        await authenticator.authenticate(None)


async def test_with_authentication_off_everyone_is_anonymous() -> None:
    sessions = _Sessions(None)
    authenticator = Authenticator(sessions, enabled=False, ttl=60)  # type: ignore[arg-type]
    assert await authenticator.authenticate(None) is ANONYMOUS
    assert sessions.queries == 0


async def test_a_checked_key_is_trusted_for_the_cache_time_unless_forgotten() -> None:
    sessions = _Sessions(_key())
    authenticator = _authenticator(sessions)
    await authenticator.authenticate(SECRET)
    sessions.record = None  # revoked by another instance
    assert (await authenticator.authenticate(SECRET)).name == "alice"
    assert sessions.queries == 1
    authenticator.forget("alice")  # revoked here
    with pytest.raises(UnauthorizedError):
        await authenticator.authenticate(SECRET)
    assert sessions.queries == 2


async def test_with_no_cache_time_every_request_asks_the_database() -> None:
    sessions = _Sessions(_key())
    authenticator = _authenticator(sessions, ttl=0)
    for _ in range(3):
        await authenticator.authenticate(SECRET)
    assert sessions.queries == 3


async def test_concurrent_requests_with_one_key_wait_for_one_lookup() -> None:
    sessions = _Sessions(_key())
    sessions.gate.clear()
    authenticator = _authenticator(sessions)
    waiting = [asyncio.ensure_future(authenticator.authenticate(SECRET)) for _ in range(20)]
    # The lookup starts after every request has asked for the key (tasks run in order).
    await sessions.asked.wait()
    sessions.gate.set()
    principals = await asyncio.gather(*waiting)
    assert sessions.queries == 1
    assert {principal.name for principal in principals} == {"alice"}


# --- Stream tokens ----------------------------------------------------------------------------


async def test_a_token_verifies_as_its_key_until_it_expires() -> None:
    tokens = _tokens(_Sessions(_key(scopes="admin")))
    issued = await tokens.issue(Principal("alice", grants(["admin"])))
    assert issued.token.startswith(TOKEN_PREFIX)
    assert issued.expires_at.tzinfo is not None
    principal, expires = await tokens.verify(issued.token)
    assert principal == Principal("alice", grants(["admin"]))
    assert expires == issued.expires_at.timestamp()


async def test_an_expired_token_is_refused() -> None:
    tokens = _tokens(_Sessions(_key()), lifetime=-1.0)
    issued = await tokens.issue(Principal("alice", grants(["read"])))
    with pytest.raises(UnauthorizedError, match="expired"):
        await tokens.verify(issued.token)


async def test_a_token_dies_with_its_key() -> None:
    sessions = _Sessions(_key())
    tokens = _tokens(sessions, ttl=0)
    issued = await tokens.issue(Principal("alice", grants(["read"])))
    sessions.record = None
    with pytest.raises(UnauthorizedError, match="revoked"):
        await tokens.verify(issued.token)


async def test_a_revoked_key_cannot_get_a_token() -> None:
    with pytest.raises(UnauthorizedError, match="unknown or revoked"):
        await _tokens(_Sessions(None)).issue(Principal("alice", grants(["read"])))


async def test_forget_drops_a_cached_key_at_once() -> None:
    sessions = _Sessions(_key())
    tokens = _tokens(sessions)
    issued = await tokens.issue(Principal("alice", grants(["read"])))
    await tokens.verify(issued.token)
    sessions.record = None
    await tokens.verify(issued.token)  # still cached
    tokens.forget("alice")
    with pytest.raises(UnauthorizedError):
        await tokens.verify(issued.token)


async def test_a_token_signed_with_another_secret_is_refused() -> None:
    record = _key()
    issued = await _tokens(_Sessions(record), secret="a" * 32).issue(
        Principal("alice", grants(["read"]))
    )
    with pytest.raises(UnauthorizedError, match="not valid"):
        await _tokens(_Sessions(record), secret="b" * 32).verify(issued.token)


async def test_an_altered_token_is_refused() -> None:
    tokens = _tokens(_Sessions(_key()))
    token = (await tokens.issue(Principal("alice", grants(["read"])))).token
    payload, mac = token.removeprefix(TOKEN_PREFIX).split(".")
    flipped = "A" if mac[5] != "A" else "B"
    for altered in (
        f"{TOKEN_PREFIX}{payload}.{mac[:5]}{flipped}{mac[6:]}",
        f"{TOKEN_PREFIX}{payload[:-1]}.{mac}",
        f"{TOKEN_PREFIX}{payload}{mac}",
        token + "x" * 200,
        token.removeprefix(TOKEN_PREFIX),
        SECRET,
        "st_",
        "st_x.y",
    ):
        with pytest.raises(UnauthorizedError, match="not valid"):
            await tokens.verify(altered)


async def test_a_token_naming_no_possible_key_is_refused_without_a_lookup() -> None:
    sessions = _Sessions(_key())
    tokens = _tokens(sessions)
    # Authentication off: tokens name key id 0, which no key has.
    anonymous = await tokens.issue(ANONYMOUS, anonymous=True)
    with pytest.raises(UnauthorizedError, match="not valid"):
        await tokens.verify(anonymous.token)
    assert sessions.queries == 0
