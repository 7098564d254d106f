"""In-process ASGI harness: the CPU a request costs Stockroom's app, without HTTP or wrk.

Builds the app as `stockroom serve` does (default settings: auth, metrics, the access log to
stderr, the webhook dispatcher) on a fresh PostgreSQL database `stockroom_prof` of 1,000
items, then calls it directly, CONC requests at a time: 5 rounds of N/5 requests, and the
process's CPU microseconds per request (time.process_time, background work included) of
each. For where the time goes, under py-spy:

    MODE=create .venv/bin/py-spy record -r 400 --format raw -o create.txt -- \\
        .venv/bin/python bench/inprocess.py 2>/dev/null

MODE: get (default), list, adjust (random items, +1/-1), create. DISPATCH=0 turns the
webhook dispatcher off. The figures vary by +-20% from run to run on a shared 2-core
machine: use it for py-spy's shares (where the time goes), `make bench` for how fast.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from typing import Any

import asyncpg
import orjson
import uvloop

from stockroom.app import create_app
from stockroom.auth import service as keys
from stockroom.migrations import upgrade_async
from stockroom.settings import Settings

MODE = os.environ.get("MODE", "get")
N = int(os.environ.get("N", "20000"))
CONC = int(os.environ.get("CONC", "64"))
ADMIN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_prof"
SEED = """
INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,
                   created_at, updated_at)
SELECT 'S' || g, 'n' || g, 'n' || g, '', 100, 1000000, 1, now(), now()
FROM generate_series(1, 1000) g;
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT id, quantity, 'initial', quantity, now() FROM items;
"""


async def fresh_database() -> str:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + DATABASE
    await upgrade_async(dsn.replace("postgresql://", "postgresql+asyncpg://"))
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(SEED)
    finally:
        await connection.close()
    return dsn.replace("postgresql://", "postgresql+asyncpg://")


def next_request(counter: list[int]) -> tuple[str, str, bytes]:
    if MODE == "create":
        counter[0] += 1
        sku = f"P{uuid.uuid4().hex[:6]}-{counter[0]}"
        item = {"sku": sku, "name": "x", "price": "1.00", "quantity": 5}
        return "POST", "/items", orjson.dumps(item)
    if MODE == "adjust":
        path = f"/items/{random.randint(1, 1000)}/adjustments"
        return "POST", path, orjson.dumps({"delta": random.choice((1, -1))})
    if MODE == "list":
        return "GET", "/items", b""
    return "GET", f"/items/{random.randint(1, 1000)}", b""


async def main() -> None:
    url = await fresh_database()
    dispatch = os.environ.get("DISPATCH", "1") == "1"
    app = create_app(Settings(database_url=url, webhook_dispatcher=dispatch))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    async with app.state.resources.sessions() as session:
        _record, secret = await keys.create_key(session, "inprocess", ["admin"])
    authorization = f"Bearer {secret}".encode()
    counter = [0]

    async def one() -> None:
        method, path, body = next_request(counter)
        headers = [(b"host", b"bench"), (b"authorization", authorization)]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 8000),
        }
        received = False
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the request runs
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status[0] >= 400:
            raise SystemExit(f"{method} {path}: {status[0]}")

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    try:
        await worker(500)  # warm-up: statements prepared, pools filled
        per_round = (N // 5 // CONC) * CONC
        rounds = []
        for _ in range(5):
            started = time.process_time()
            await asyncio.gather(*(worker(per_round // CONC) for _ in range(CONC)))
            rounds.append((time.process_time() - started) / per_round * 1e6)
        figures = " ".join(f"{x:.0f}" for x in rounds)
        print(
            f"{MODE}: min {min(rounds):.0f}, median {sorted(rounds)[2]:.0f} us CPU a request "
            f"(rounds: {figures})"
        )
    finally:
        await lifespan.__aexit__(None, None, None)


if __name__ == "__main__":
    uvloop.run(main())
