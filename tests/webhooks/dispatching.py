"""Apps that deliver webhooks to the test receivers (fast retries, private addresses
allowed), an admin client of such an app, and subscribing a receiver through the API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.apps import client_for, create_key, make_settings, start_app

# Fast retries and short timeouts, so that a test of three attempts takes a second.
QUICK = {
    "webhook_dispatcher": True,
    "webhook_allow_private": True,  # the receivers listen on 127.0.0.1
    "webhook_backoff_seconds": 0.05,
    "webhook_timeout": 0.5,
    "webhook_connect_timeout": 0.5,
    "events_poll_seconds": 0.05,
}


@asynccontextmanager
async def running_app(database_url: str, **overrides: Any) -> AsyncIterator[FastAPI]:
    """An app of its own (lifespan started), e.g. with the dispatcher on."""
    application, lifespan = await start_app(make_settings(database_url, **{**QUICK, **overrides}))
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


async def admin(application: FastAPI) -> httpx.AsyncClient:
    """A client of ``application`` holding a new `admin` key."""
    key = await create_key(application, f"hooks-{uuid.uuid4().hex[:8]}", ["admin"])
    return client_for(application, key)


async def subscribe(
    http: httpx.AsyncClient, url: str, events: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """``POST /webhooks`` for ``url`` (every event type unless ``events``); its JSON."""
    response = await http.post("/webhooks", json={"url": url, "events": events or ["*"], **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
