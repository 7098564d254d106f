"""The hosts of a primary URL that names several (a primary and its standbys: failover),
tried one at a time, each with the whole connect timeout, the last that took writes first.

asyncpg tries a URL's hosts in order within one timeout for them all: a first host that
does not answer at all (its machine off, packets dropped) used the whole timeout of every
new connection, and the next host, the promoted standby, was never tried (a 503 for as long
as the dead host stayed in the URL). Here each host has a timeout of its own, and the one
that took writes last is tried first: after a failover, only the first new connection
waits for the dead host.

Used by the request pool, the SQLAlchemy engine, the LISTEN connection (``_postgresql/``)
and the migrations (``migrations/env.py``).

Which host takes writes is asyncpg's to say (``target_session_attrs=read-write``, in the
URL): a host that answers but does not take writes (a standby) is passed over like one that
does not answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL

__all__ = ["Hosts"]

T = TypeVar("T")

# Why a host is passed over for the next: it refused or did not answer, does not take writes,
# or is starting up or shutting down (the driver's own error, or SQLAlchemy's wrapping of it).
_NEXT_HOST = (
    OSError,
    TimeoutError,
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.CannotConnectNowError,
)


def _next_host(exc: BaseException) -> bool:
    return isinstance(exc, _NEXT_HOST) or isinstance(exc.__cause__, _NEXT_HOST)


class Hosts:
    """A URL's hosts, in the order to try them now."""

    def __init__(self, hosts: list[tuple[str, int]]) -> None:
        self.hosts = hosts
        self._first = 0  # the host that took writes last

    @classmethod
    def of(cls, url: URL) -> Hosts | None:
        """The hosts of ``url`` if it names several (else None: asyncpg's own connect)."""
        given = url.query.get("host")
        if not isinstance(given, tuple) or len(given) < 2:
            return None
        hosts = []
        for host in given:
            name, _, port = host.rpartition(":")
            hosts.append((name.removeprefix("[").removesuffix("]"), int(port)))
        return cls(hosts)

    def _order(self) -> list[int]:
        first = self._first
        return [first, *(index for index in range(len(self.hosts)) if index != first)]

    async def connect(self, attempt: Callable[[str, int], Awaitable[T]]) -> T:
        """``attempt(host, port)`` on each host in turn until one connects; the last
        failure if none does."""
        failure: BaseException | None = None
        for index in self._order():
            try:
                connection = await attempt(*self.hosts[index])
            except Exception as exc:
                if not _next_host(exc):
                    raise
                failure = exc
                continue
            self._first = index
            return connection
        assert failure is not None
        raise failure

    def connect_sync(self, attempt: Callable[[str, int], Any]) -> Any:
        """:meth:`connect` for SQLAlchemy's pool, whose connect is synchronous (it runs the
        driver's coroutine in a greenlet)."""
        failure: BaseException | None = None
        for index in self._order():
            try:
                connection = attempt(*self.hosts[index])
            except Exception as exc:
                if not _next_host(exc):
                    raise
                failure = exc
                continue
            self._first = index
            return connection
        assert failure is not None
        raise failure
