"""Concurrent adjustments on one item never lose an update and never oversell.

64 clients send 25 random adjustments each (mixed signs, many that would oversell) to one
item, through one app in-process and through two real `stockroom serve` processes on the
same PostgreSQL database. Afterwards the ledger must explain the quantity exactly, and every
refusal must name a stock level that really existed and really was too low.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.apps import create_key
from tests.support.items import ItemFactory
from tests.support.servers import Server, start_servers

# The one-process run takes PgBouncer's path too; the two-process run is postgresql_only.
# Both run alone (tests/conftest.py): 64 clients keep every pooled connection busy.
pytestmark = [pytest.mark.pgbouncer, pytest.mark.exclusive]

INITIAL = 40
# 64-way concurrency on PostgreSQL is the point; 25 each is plenty for the stock, drifting
# down by 0.6 a request on average, to run out again and again (1,600 requests).
CLIENTS, PER_CLIENT = 64, 25
Post = Callable[[int, dict[str, Any]], Awaitable[httpx.Response]]


@dataclass
class Outcome:
    accepted: list[int] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


async def hammer(post: Post, clients: int, per_client: int, seed: int) -> Outcome:
    outcome = Outcome()

    async def one_client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(per_client):
            # Slightly more removals than additions, so stock runs out again and again.
            delta = rng.choice([-5, -4, -3, -2, -1, -1, 1, 2, 3, 4])
            response = await post(n, {"delta": delta, "reason": f"client {n}"})
            if response.status_code == 201:
                outcome.accepted.append(response.json()["delta"])
            elif response.status_code == 409:
                outcome.refused.append(response.json())
            else:
                outcome.other.append(f"{response.status_code} {response.text}")

    await asyncio.gather(*(one_client(n) for n in range(clients)))
    return outcome


async def check(client: httpx.AsyncClient, item_id: int, outcome: Outcome) -> dict[str, int]:
    assert outcome.other == []
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        body = (await client.get(f"/items/{item_id}/adjustments", params=params)).json()
        rows.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    rows.reverse()  # oldest first
    item = (await client.get(f"/items/{item_id}")).json()

    ledger_sum = sum(r["delta"] for r in rows)
    assert item["quantity"] == ledger_sum == INITIAL + sum(outcome.accepted)
    assert len(rows) == 1 + len(outcome.accepted)
    # Replaying the ledger in order gives each row's quantity_after: no lost update.
    running = 0
    states = set()
    for row in rows:
        running += row["delta"]
        assert row["quantity_after"] == running
        assert running >= 0
        states.add(running)
    # Each refusal names a stock level the ledger really passed through, too low for it.
    for refusal in outcome.refused:
        assert refusal["type"].endswith("insufficient-stock")
        assert refusal["available"] + refusal["delta"] < 0
        assert refusal["available"] in states
    assert item["version"] == 1 + len(outcome.accepted)
    return {
        "requests": len(outcome.accepted) + len(outcome.refused),
        "accepted": len(outcome.accepted),
        "rejected": len(outcome.refused),
        "final_quantity": item["quantity"],
        "ledger_sum": ledger_sum,
    }


def report(name: str, figures: dict[str, int]) -> None:
    print(f"\n{name}: {json.dumps(figures)}")


async def test_one_process(backend: str, client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    clients, per_client = (CLIENTS, PER_CLIENT) if backend == "postgresql" else (16, 25)
    item = await new_item(quantity=INITIAL)
    url = f"/items/{item['id']}/adjustments"

    async def post(_n: int, body: dict[str, Any]) -> httpx.Response:
        return await client.post(url, json=body)

    outcome = await hammer(post, clients, per_client, seed=1)
    figures = await check(client, item["id"], outcome)
    assert figures["rejected"] > 0  # the test really pushed stock below zero
    report(f"{backend}, one process, {clients}x{per_client}", figures)


@pytest.fixture
def two_servers(
    database_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        # Started together (start_servers reaps both if either fails to start).
        # The default pool (20 each): the test runs alone (exclusive), contention is the point.
        servers = start_servers(
            database_url, tmp_path, 2, env_extra={"STOCKROOM_DATABASE_POOL_SIZE": "20"}
        )
        for server in servers:
            # Server.stop() waits, and kills and fails the test if a server does not stop:
            # every server started is reaped, even if the other fails to stop.
            stack.callback(server.stop)
        try:
            yield servers
        finally:
            for server in servers:
                server.process.terminate()  # both stop at once


@pytest.mark.postgresql_only
async def test_two_processes(
    two_servers: list[Server],
    app: FastAPI,
    client: httpx.AsyncClient,
    new_item: ItemFactory,
) -> None:
    item = await new_item(quantity=INITIAL)
    # Made in-process, as `stockroom apikey create` makes it, in the servers' database.
    key = await create_key(app, f"hammer-{uuid.uuid4().hex[:8]}", ["write"])
    limits = httpx.Limits(max_connections=64)
    http = [
        httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            limits=limits,
        )
        for server in two_servers
    ]
    url = f"/items/{item['id']}/adjustments"

    retries = 0

    async def post(n: int, body: dict[str, Any]) -> httpx.Response:
        # Over a real network a connection can drop mid-request; a careful client retries
        # with the same Idempotency-Key, which makes the retry safe.
        nonlocal retries
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(3):
            try:
                return await http[n % 2].post(url, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                retries += 1
        raise AssertionError("unreachable")

    try:
        outcome = await hammer(post, CLIENTS, PER_CLIENT, seed=2)
    finally:
        for each in http:
            await each.aclose()
    figures = await check(client, item["id"], outcome)
    assert figures["rejected"] > 0
    report(
        f"postgresql, two `stockroom serve` processes, {CLIENTS}x{PER_CLIENT}",
        {**figures, "retries": retries},
    )
