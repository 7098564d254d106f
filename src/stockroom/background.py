"""Background work of a process: periodic clean-ups and the event machinery (the log's
listener, the stream hub, the webhook dispatcher, the backlog gauges)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stockroom.db import utcnow
from stockroom.events import log as event_log
from stockroom.events.wakeup import CHANNEL
from stockroom.observability import Metrics
from stockroom.problems import is_unavailable
from stockroom.resources import Resources
from stockroom.webhooks.dispatcher import dispatching
from stockroom.webhooks.queue import backlog

__all__ = ["event_services", "purge_periodically", "repeat"]

log = structlog.get_logger("stockroom.background")


async def purge_periodically(
    what: str,
    sessions: async_sessionmaker[AsyncSession],
    purge_batch: Callable[[AsyncSession], Awaitable[int]],
    interval: float,
) -> None:
    """Run ``purge_batch`` (one short transaction that deletes a batch and says how many)
    until nothing is left, then again every ``interval`` seconds: a clean-up never holds a
    lock for long, and requests get in between batches."""
    while True:
        try:
            deleted = 0
            while True:
                async with sessions() as session:
                    batch = await purge_batch(session)
                deleted += batch
                if batch == 0:
                    break
                await asyncio.sleep(0)
            if deleted:
                log.info("purged", what=what, count=deleted)
        except Exception as exc:
            _failed("purge failed; will retry", what, exc)
        await asyncio.sleep(interval)


def _failed(message: str, what: str, exc: Exception) -> None:
    if not is_unavailable(exc):
        log.exception(message, what=what)
    else:  # the database is away (a crash, a failover): no traceback, no error
        log.warning(message, what=what, error=str(exc).split("\n")[0])


async def repeat(what: str, job: Callable[[], Awaitable[None]], interval: float) -> None:
    """Run ``job`` every ``interval`` seconds; a failure is logged and tried again later."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception as exc:
            _failed("periodic work failed; will retry", what, exc)


async def _refresh_backlog(
    sessions: async_sessionmaker[AsyncSession], metrics: Metrics, interval: float
) -> None:
    while True:
        try:
            async with sessions() as session:
                figures = await backlog(session)
            metrics.webhook_backlog.set(figures.pending)
            metrics.webhook_backlog_oldest.set(figures.oldest_age_seconds)
        except Exception as exc:
            log.warning("cannot measure the webhook backlog", error=str(exc))
        await asyncio.sleep(interval)


@asynccontextmanager
async def event_services(
    resources: Resources, *, serving: bool, dispatcher: bool
) -> AsyncIterator[None]:
    """Everything that follows the event log, for the duration of the block: the log's
    prune and its listener; with ``serving`` (an app) the live stream's hub and the webhook
    backlog gauges; with ``dispatcher`` the webhook dispatcher."""
    settings, sessions = resources.settings, resources.sessions
    retention = dt.timedelta(days=settings.events_retention_days)

    async def prune(session: AsyncSession) -> int:
        return await event_log.prune(session, utcnow() - retention)

    tasks = [
        asyncio.create_task(
            purge_periodically("events", sessions, prune, settings.events_prune_seconds),
            name="event-prune",
        ),
        asyncio.create_task(
            resources.stores.database.listen(CHANNEL, resources.wakeup.wake), name="event-listen"
        ),
    ]
    hub = resources.event_hub if serving else None
    if hub is not None:
        try:
            await hub.start()
        except Exception as exc:  # the database is away; the hub keeps trying
            log.warning("event hub cannot start yet", error=str(exc))
        tasks.append(asyncio.create_task(hub.run(), name="event-hub"))
    metrics = resources.metrics
    if serving and metrics is not None:
        tasks.append(
            asyncio.create_task(
                _refresh_backlog(sessions, metrics, settings.webhook_backlog_seconds),
                name="backlog",
            )
        )
    try:
        async with AsyncExitStack() as stack:
            if dispatcher:
                await stack.enter_async_context(dispatching(resources))
            yield
    finally:
        if hub is not None:
            hub.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
