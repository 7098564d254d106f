"""What the read-replica tests share: a primary and its hot standby of the test's own
(tests/support/pgservers.py), an app that reads from the standby, and what the app says of
it (its readiness, where its reads ran)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from stockroom.migrations import upgrade_async
from tests.support.apps import Lifespan, client_for, make_settings, start_app
from tests.support.pgservers import PgServer, PgServers

__all__ = [
    "TOKEN",
    "Cluster",
    "caught_up",
    "make_cluster",
    "open_app",
    "reads",
    "replica_serving",
    "served_by_replica",
]

TOKEN = "Consistency-Token"


@dataclass
class Cluster:
    primary: PgServer
    standby: PgServer
    url: str
    replica_url: str


async def make_cluster(pg_servers: PgServers) -> Cluster:
    """A primary with a migrated database `stockroom`, and a hot standby of it."""
    primary = await asyncio.to_thread(pg_servers.start)
    url = await asyncio.to_thread(primary.create_database, "stockroom")
    await upgrade_async(url)
    standby = await asyncio.to_thread(primary.make_standby)
    return Cluster(primary, standby, url, standby.url_for("stockroom"))


async def open_app(url: str, replica_url: str, **overrides: Any) -> tuple[FastAPI, Lifespan]:
    """An app on ``url`` reading from ``replica_url``, its health sampled every 50 ms."""
    values: dict[str, Any] = {
        "database_pool_size": 4,
        "database_replica_urls": replica_url,
        "database_replica_check_interval": 0.05,
        **overrides,
    }
    return await start_app(make_settings(url, **values))


async def replica_serving(app: FastAPI) -> bool:
    async with client_for(app) as client:
        return await served_by_replica(client)


async def served_by_replica(http: httpx.AsyncClient) -> bool:
    """Whether /readyz says the (one) replica takes reads."""
    body = (await http.get("/readyz")).json()
    return bool(body["replicas"][0]["serving"])


def reads(app: FastAPI) -> dict[tuple[str, str], int]:
    """The app's reads that a replica may answer, by (target, reason)."""
    return dict(app.state.resources.stores.database.read_routes())


async def caught_up(cluster: Cluster) -> None:
    """The standby has replayed everything the primary has written so far."""
    lsn = await asyncio.to_thread(cluster.primary.current_lsn)
    await asyncio.to_thread(cluster.standby.wait_replayed, lsn)
