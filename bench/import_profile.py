"""Where a large import's time goes: one import of ROWS generated rows (1,000,000 by default,
the rows of `make bench-files`) through a real `stockroom serve` on PostgreSQL, with

- the wall time and the server process's CPU time (psutil), and
- what the import's database sessions are doing: `pg_stat_activity` sampled about every
  20 ms from a connection of its own, the active samples counted by statement (its first
  90 characters) and wait event.

    .venv/bin/python bench/import_profile.py            # ROWS=200000 for a shorter run

Then, on the database it leaves (ROWS items), the plan of one more batch of the import's
main statement (`EXPLAIN (ANALYZE, BUFFERS)` of `_INSERT_BATCH` over BATCH_ROWS new rows,
rolled back): where a batch's time goes, statement part by statement part.

A profile, not a benchmark: `make bench-files` gives the import's speed against COPY.
Uses (and drops) the database of `make bench-files`; the generated file is kept in the
system's temporary folder for the next run.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from wrkrun import free_port, wait_healthy

from files import ADMIN_DSN, DATABASE, psql, write_rows

ROWS = int(os.environ.get("ROWS", "1000000"))
SAMPLE_SECONDS = 0.02
ACTIVITY = """
SELECT state, wait_event_type, wait_event, left(query, 90) AS query FROM pg_stat_activity
WHERE datname = $1 AND application_name <> 'stockroom-listen' AND pid <> pg_backend_pid()
"""


class Sampler(threading.Thread):
    """Samples the sessions of DATABASE on an event loop of its own until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.active: collections.Counter[tuple[str, str]] = collections.Counter()
        self.states: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        connection = await asyncpg.connect(ADMIN_DSN, timeout=10)
        try:
            while not self.stopping.is_set():
                for row in await connection.fetch(ACTIVITY, DATABASE):
                    self.states[row["state"] or "?"] += 1
                    if row["state"] == "active":
                        query = re.sub(r"\s+", " ", row["query"] or "").strip()
                        wait = f"{row['wait_event_type']}:{row['wait_event']}"
                        self.active[(query, wait)] += 1
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await connection.close()


async def explain_one_batch() -> None:
    """The plan of one more batch of new rows, in a transaction that is rolled back."""
    from stockroom.files.service import BATCH_ROWS
    from stockroom.items import _postgresql as items

    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(items._CREATE_SEEN_TABLE)
        await connection.execute(items._CREATE_BATCH_TABLE)
        rows = [
            (n, f"P{n:09d}", f"Profile item {n}", f"profile item {n}", f"Number {n}", n, n % 50)
            for n in range(BATCH_ROWS)
        ]
        columns = ["line", "sku", "name", "name_key", "description", "price_cents", "quantity"]
        await connection.copy_records_to_table(
            "stockroom_import_rows", records=rows, columns=columns
        )
        transaction = connection.transaction()
        await transaction.start()
        try:
            plan = await connection.fetch(
                "EXPLAIN (ANALYZE, BUFFERS) " + items._INSERT_BATCH,
                dt.datetime.now(dt.UTC),
                "import",
            )
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    print(f"one more batch of {BATCH_ROWS:,} new rows, EXPLAIN (ANALYZE, BUFFERS), rolled back:")
    for row in plan:
        print("  " + row[0])


def main() -> None:
    data = Path(tempfile.gettempdir()) / f"stockroom-import-profile-{ROWS}.csv"
    if not data.exists():
        print(f"generating {ROWS:,} rows ...", flush=True)
        write_rows(data, ROWS)
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    url = ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
    env = {
        **os.environ,
        "STOCKROOM_DATABASE_URL": f"{url}/{DATABASE}",
        "STOCKROOM_LOG_LEVEL": "warning",
    }
    stockroom = [sys.executable, "-m", "stockroom"]
    subprocess.run([*stockroom, "migrate"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*stockroom, "apikey", "create", "--name", "profile", "--scopes", "write"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([*stockroom, "serve", "--port", str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        process = psutil.Process(server.pid)
        sampler = Sampler()
        sampler.start()
        cpu_before, started = process.cpu_times(), time.perf_counter()
        headers = {"Authorization": f"Bearer {key}", "content-type": "text/csv"}
        with httpx.Client(base_url=base, timeout=3600) as http, data.open("rb") as body:
            response = http.post("/items/import", content=body, headers=headers)
        wall = time.perf_counter() - started
        cpu_after = process.cpu_times()
        sampler.stopping.set()
        sampler.join()
        response.raise_for_status()
        report = response.json()
        assert report["created"] == ROWS, report
    finally:
        server.terminate()
        server.wait()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    print(f"{ROWS:,} rows imported in {wall:.1f} s; the server's CPU {cpu:.1f} s")
    total = sum(sampler.active.values())
    print(f"sessions sampled: {dict(sampler.states)}; active samples by statement and wait:")
    for (query, wait), count in sampler.active.most_common(15):
        print(f"  {count / total:6.1%}  {wait:22}  {query}")
    asyncio.run(explain_one_batch())


if __name__ == "__main__":
    main()
