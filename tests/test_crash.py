"""A crash of the database itself: a real `stockroom serve` on a throwaway PostgreSQL
(tests/support/pgservers.py) whose postmaster is killed with SIGKILL under load and started
again a second later (crash recovery), the service never restarted.

tests/test_outages.py cuts the service off through a TCP proxy; here the server really dies:
backends end mid-statement, connections are refused, then the server answers "starting up"
(57P03) while it recovers. Throughout, every answer is either the request's success or a 503
problem with ``Retry-After`` (never a 500: the server's log names each 500's exception); and
afterwards nothing acknowledged is lost: every 201 adjustment is in the ledger, each item's
ledger adds up to its quantity, and every ledger row has its ``stock.adjusted`` event.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.outages import (
    LEDGER_TOTALS_SQL,
    Recorder,
    neither_success_nor_503,
    why,
)
from tests.support.pgservers import PgServer, PgServers
from tests.support.servers import cli_create_key, start_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgresql_only

WRITERS = 8
LOAD_SECONDS = 8.0
KILL_AT = 2.0
DOWN_SECONDS = 1.0
# Every key's cache entry expires this often: requests keep looking their key up in the
# database, during the outage too.
AUTH_CACHE_SECONDS = "0.2"


async def _load(http: httpx.AsyncClient, item_ids: list[int], until: float, rec: Recorder) -> None:
    async def writer(item_id: int) -> None:
        for n in itertools.count():
            if time.monotonic() >= until:
                return
            response = await http.post(
                f"/items/{item_id}/adjustments", json={"delta": 1 + n % 3, "reason": "crash"}
            )
            rec.note("POST /items/{id}/adjustments", response)
            if response.status_code == 201:
                rec.acknowledged.append(response.json()["id"])
            else:
                await asyncio.sleep(0.02)

    async def prober(offset: int) -> None:
        """Every other kind of request, in turn (the key's cache entry keeps expiring)."""
        for n in itertools.count(offset):
            if time.monotonic() >= until:
                return
            item_id = item_ids[n % len(item_ids)]
            kind = n % 6
            if kind == 0:
                what, response = "GET /items/{id}", await http.get(f"/items/{item_id}")
            elif kind == 1:
                what, response = "GET /items", await http.get("/items", params={"limit": 5})
            elif kind == 2:
                body = {"sku": f"CR-{uuid.uuid4().hex[:10]}", "name": "Crash", "price": 1}
                what, response = "POST /items", await http.post("/items", json=body)
            elif kind == 3:
                what, response = "GET /readyz", await http.get("/readyz")
            elif kind == 4:
                what = "GET /items/{id}/adjustments"
                response = await http.get(f"/items/{item_id}/adjustments")
            else:
                what = "GET /events"
                async with http.stream("GET", "/events") as response:
                    pass  # the answer's head is enough: a stream (200) or a problem
            rec.note(what, response)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(i) for i in item_ids), *(prober(k) for k in range(4)))


async def _crash(pg: PgServer, rec: Recorder) -> tuple[float, float]:
    """kill -9 at KILL_AT, start again DOWN_SECONDS later; when each happened."""
    await asyncio.sleep(KILL_AT - (time.monotonic() - rec.started))
    killed = time.monotonic() - rec.started
    await asyncio.to_thread(pg.kill9)
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(pg.start)
    return killed, time.monotonic() - rec.started


async def test_kill_9_of_postgresql_under_load(pg_servers: PgServers, tmp_path: Path) -> None:
    pg = await asyncio.to_thread(pg_servers.start, "crash")
    url = await asyncio.to_thread(pg.create_database, "stockroom")
    server = await asyncio.to_thread(
        start_server, url, tmp_path, env_extra={"STOCKROOM_AUTH_CACHE_SECONDS": AUTH_CACHE_SECONDS}
    )
    try:
        key = await asyncio.to_thread(cli_create_key, url, tmp_path, "write")
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=20, limits=limits
        ) as http:
            item_ids = []
            for n in range(WRITERS):
                body = {"sku": f"CRASH-{n}-{uuid.uuid4().hex[:6]}", "name": "Crash", "price": 1}
                created = await http.post("/items", json=body)
                assert created.status_code == 201, created.text
                item_ids.append(created.json()["id"])

            rec = Recorder()
            until = rec.started + LOAD_SECONDS
            crash = asyncio.create_task(_crash(pg, rec))
            await _load(http, item_ids, until, rec)
            killed, restarted = await crash

            # The same process serves again, with no restart.
            async def serves() -> bool:
                return (await http.get(f"/items/{item_ids[0]}")).status_code == 200

            await wait_until(serves)
            assert (await http.get("/readyz")).status_code == 200
            after = await http.post(f"/items/{item_ids[0]}/adjustments", json={"delta": 1})
            assert after.status_code == 201, after.text
            rec.acknowledged.append(after.json()["id"])
        assert server.process.poll() is None

        # Every answer was a success or a 503 problem with Retry-After: never a 500.
        wrong = neither_success_nor_503(rec.answers)
        assert not wrong, (
            f"{len(wrong)} of {len(rec.answers)} answers neither a success nor a 503 problem: "
            f"{sorted({(a.what, a.status) for a in wrong})}; the server logged: "
            f"{why(server, {a.request_id for a in wrong})}"
        )
        refused = [a for a in rec.answers if a.status == 503]
        assert refused, "nothing was refused: the database did not go away"
        # Nothing after the restart is refused for long: the pool recovered on its own.
        last_503 = max(a.at for a in refused)
        assert last_503 < restarted + 3, (last_503, restarted)

        # Nothing acknowledged was lost, and the ledger and the event log agree.
        db = "stockroom"
        ledger = {
            row["id"]: row["item_id"]
            for row in await pg.fetch("SELECT id, item_id FROM adjustments", database=db)
        }
        lost = set(rec.acknowledged) - set(ledger)
        assert not lost, f"{len(lost)} acknowledged adjustments are not in the ledger"
        sums = await pg.fetch(
            LEDGER_TOTALS_SQL,
            database=db,
        )
        assert all(row["quantity"] == row["total"] for row in sums), [
            tuple(row) for row in sums if row["quantity"] != row["total"]
        ]
        evented = {
            row["adjustment"]
            for row in await pg.fetch(
                "SELECT (body::json -> 'data' ->> 'id')::bigint AS adjustment FROM events "
                "WHERE type = 'stock.adjusted'",
                database=db,
            )
        }
        missing = set(ledger) - evented
        assert not missing, f"{len(missing)} ledger rows have no stock.adjusted event"
    finally:
        server.process.kill()
        await asyncio.to_thread(server.process.wait)

    by_kind: dict[str, dict[int, int]] = {}
    for a in rec.answers:
        counts = by_kind.setdefault(a.what, {})
        counts[a.status] = counts.get(a.status, 0) + 1
    adjustments = by_kind.get("POST /items/{id}/adjustments", {})
    print(
        f"\ncrash: killed at {killed:.2f} s, started again at {restarted:.2f} s, last 503 at "
        f"{last_503:.2f} s; adjustments: {len(rec.acknowledged)} acknowledged, "
        f"{sum(n for s, n in adjustments.items() if s != 201)} refused; "
        f"{len(refused)} answers 503 of {len(rec.answers)}; by request: {by_kind}"
    )
