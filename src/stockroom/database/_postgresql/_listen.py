"""A process's one LISTEN connection, outside the pools: held until cancelled, and made
anew whenever it is lost (the readers of the event log poll meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog

from stockroom.database.hosts import Hosts

__all__ = ["listen"]

log = structlog.get_logger("stockroom.database")

_RECONNECT_SECONDS = 2.0
# Besides a refusal: the server gone between connecting and LISTEN (a crash: asyncpg then
# says the connection is closed, or is left in a state it calls an internal error). Any of
# these ended the task for good, and with it this process's wake-ups.
_LOST = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)


async def listen(
    dsn: str,
    connect_timeout: float,
    channel: str,
    on_notify: Callable[[], None],
    hosts: Hosts | None = None,
) -> None:
    """Call ``on_notify`` on each notification on ``channel``, and once on each (re)connect
    (anything committed while nobody listened); until cancelled. ``hosts``: the URL's
    several hosts, tried one at a time (``database/hosts.py``)."""

    async def attempt(host: str | None = None, port: int | None = None) -> asyncpg.Connection:
        return await asyncpg.connect(
            dsn,
            host=host,
            port=port,
            timeout=connect_timeout,
            server_settings={"application_name": "stockroom-listen"},
        )

    while True:
        connection: asyncpg.Connection | None = None
        try:
            connected = await attempt() if hosts is None else await hosts.connect(attempt)
            connection = connected
            lost = asyncio.Event()
            connected.add_termination_listener(lambda _conn, flag=lost: flag.set())
            await connected.add_listener(channel, lambda *_args: on_notify())
            on_notify()  # anything committed while we were not listening
            await lost.wait()
            log.warning("event listener connection lost; reconnecting")
        except (*_LOST, asyncpg.PostgresError) as exc:
            log.warning("event listener cannot connect; polling until it can", error=str(exc))
        finally:
            if connection is not None and not connection.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))
        await asyncio.sleep(_RECONNECT_SECONDS)
