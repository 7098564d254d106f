"""Webhook secrets, signatures (Standard Webhooks) and the guard against SSRF.

Signatures follow https://www.standardwebhooks.com: ``webhook-signature`` is
``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`` keyed by the
secret's decoded bytes. The ``standardwebhooks`` package verifies them in the tests.

SSRF: a webhook URL must not make the service call into its own network. The host is
resolved and every address it resolves to must be public. This is checked when the webhook
is created (a 422) and again at every connection the dispatcher opens, on the very address
it connects to (:class:`GuardedTransport`), so a name that resolves to a public address at
creation and to a private one later (DNS rebinding) is still refused. Redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = [
    "SECRET_PATTERN",
    "SECRET_PREFIX",
    "AddressRefusedError",
    "GuardedTransport",
    "InvalidSecretError",
    "check_host",
    "generate_secret",
    "secret_key",
    "sign",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_MIN_SECRET_BYTES, _MAX_SECRET_BYTES = 24, 64
# Padded base64: whole groups of four characters (three bytes each), then maybe a last
# group holding one or two bytes. `secret_key` checks the form with it (b64decode lets stray
# padding through); SECRET_PATTERN is the same rule for the OpenAPI document (so a generated
# client or a validator knows it): 24 to 64 bytes are 8 to 21 whole groups (24 to 63 bytes)
# and the optional last one.
_GROUP, _LAST = "[A-Za-z0-9+/]{4}", "(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_BASE64 = re.compile(f"(?:{_GROUP})*{_LAST}")
SECRET_PATTERN = (
    f"^{SECRET_PREFIX}(?:{_GROUP}){{{_MIN_SECRET_BYTES // 3},{_MAX_SECRET_BYTES // 3}}}{_LAST}$"
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidSecretError(ValueError):
    pass


class AddressRefusedError(httpcore.ConnectError):
    """The host is, or resolves to, an address webhooks may not reach (or cannot be
    resolved). A connect error to httpx, so a delivery records it like any other."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (24 to 64 bytes)."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecretError(f"a secret starts with {SECRET_PREFIX}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    if _BASE64.fullmatch(encoded) is None:
        raise InvalidSecretError(f"a secret is {SECRET_PREFIX} followed by base64")
    key = base64.b64decode(encoded)
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise InvalidSecretError(
            f"a secret holds {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def refusal(address: IPAddress) -> str | None:
    """Why webhooks may not call this address, or None if they may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, hit in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not public", not address.is_global),
    ):
        if hit:
            return kind
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an address literal is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise AddressRefusedError(f"cannot resolve host {host!r}") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _check(host: str, addresses: Iterable[IPAddress]) -> None:
    for address in addresses:
        kind = refusal(address)
        if kind is not None:
            if host.strip("[]") == str(address):
                raise AddressRefusedError(f"{address} is a {kind} address")
            raise AddressRefusedError(f"{host} resolves to {address}, a {kind} address")


async def check_host(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The host's addresses, all of them allowed; else :class:`AddressRefusedError`."""
    addresses = await resolve(host, port)
    if not allow_private:
        _check(host, addresses)
    return addresses


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's stream with a cheap ``is_readable``. httpcore asks it of every idle
    connection in the pool each time any request starts or ends, and its own answer goes
    through anyio's typed attributes (a dict of lambdas built per call): with many pooled
    connections that was a large part of the dispatcher's CPU (docs/async.md). Everything
    else is passed on."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle keep-alive connection is readable only if the server closed it (or
            # sent something unasked): either way it is not reused.
            if self._socket is None or self._socket.fileno() < 0:
                return True
            poll = select.poll()  # not select(): descriptors above 1023 are fine
            poll.register(self._socket, select.POLLIN)
            return bool(poll.poll(0))
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each new connection's host itself, checks the addresses, and connects to
    the checked one: no window between the check and the connection."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await check_host(host, port, allow_private=self._allow_private)
        last_error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
                return _Stream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefusedError("webhooks do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the SSRF check at connect time. httpx has no public hook for
    this, so the connection pool is rebuilt with httpcore's ``network_backend`` option."""

    def __init__(self, *, limits: httpx.Limits, allow_private: bool) -> None:
        super().__init__(limits=limits, trust_env=False)
        ssl_context = self._pool._ssl_context
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allow_private=allow_private),
        )
