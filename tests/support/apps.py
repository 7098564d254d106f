"""In-process apps of the tests: their settings, the lifespan start-up, HTTP clients that
check every JSON answer against the OpenAPI document, and real API keys."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from fastapi import FastAPI

from stockroom.app import create_app
from stockroom.auth import service as keys
from stockroom.settings import Settings
from tests.support.databases import PGBOUNCER_URLS
from tests.support.openapi_check import response_checker

# The background pollers of an app started in-process, slowed down: every app of a test
# session (the shared one, and those tests start of their own) would otherwise wake up
# several times a second for nothing and compete for the CPU with the tests. A test of a
# poller sets its own interval (e.g. tests/webhooks/dispatching.py QUICK, tests/test_metrics.py).
# The stream hub still reads the log at once when this process commits events (and on
# PostgreSQL when any process does): the poll is only its fallback.
QUIET_BACKGROUND: dict[str, Any] = {
    "events_poll_seconds": 5.0,
    "events_prune_seconds": 3600.0,
    "idempotency_purge_seconds": 3600.0,
    "webhook_backlog_seconds": 3600.0,
    "event_loop_probe_seconds": 3600.0,
}

# Two test processes share PostgreSQL's 100 connections (see tests/conftest.py's docstring).
TEST_POOL_SIZE = 10


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "log_level": "warning",
        "database_pool_size": TEST_POOL_SIZE,
        "database_pgbouncer": database_url in PGBOUNCER_URLS,
        # Tests that deliver webhooks run an app with the dispatcher on (and private
        # addresses allowed) of their own; the shared app would refuse their receivers.
        "webhook_dispatcher": False,
        **QUIET_BACKGROUND,
    }
    values.update(overrides)
    return Settings(**values)


# What start_app gives back to end the app with: ``await lifespan.__aexit__(None, None, None)``.
Lifespan = AbstractAsyncContextManager[Any]


async def start_app(settings: Settings) -> tuple[FastAPI, Lifespan]:
    """Build an app and run its lifespan start-up; returns the app and its lifespan context."""
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return app, lifespan


def client_for(application: FastAPI, key: str | None = None) -> httpx.AsyncClient:
    # raise_app_exceptions=False: an unhandled error reaches the test as the 500 a client sees.
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # Every JSON answer is validated against the app's OpenAPI document (openapi_check).
    hooks = {"response": [response_checker(application)]}
    return httpx.AsyncClient(
        transport=transport, base_url="http://stockroom.test", headers=headers, event_hooks=hooks
    )


async def create_key(application: FastAPI, name: str, scopes: list[str]) -> str:
    """A real API key, made the way `stockroom apikey create` makes it."""
    async with application.state.resources.sessions() as session:
        _record, secret = await keys.create_key(session, name, scopes)
    return secret
