"""CPU per imported row: the `stockroom serve` process and its PostgreSQL backends, against the
backend of a COPY of the same file, on PostgreSQL. Wall-clock rows/s swing with whatever else
runs on the machine; CPU seconds per row much less.

    .venv/bin/python bench/files_cpu.py [ROWS] [--statements] [--explain]
    (ROWS: default 100,000; needs psql)

The psutil CPU times of the backends are read from the processes PostgreSQL runs for the
benchmark's database, so it must run on the database's host.

Where the database's share goes:
- ``--statements``: during the import, the benchmark database's sessions in
  `pg_stat_activity`, sampled about every 20 ms from a connection of their own; the active
  samples are counted by statement (its first 90 characters) and wait event.
- ``--explain``: after the import, on the ROWS items it left, the plan of one more batch of
  the import's main statement (`EXPLAIN (ANALYZE, BUFFERS)` of `_INSERT_BATCH` over
  BATCH_ROWS new rows, rolled back): a batch's time, part by part.
"""

from __future__ import annotations

import argparse
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

from files import ADMIN_DSN, psql, write_rows

DATABASE = "stockroom_bench_files_cpu"
SAMPLE_SECONDS = 0.02
ACTIVITY = """
SELECT state, wait_event_type, wait_event, left(query, 90) AS query FROM pg_stat_activity
WHERE datname = $1 AND application_name <> 'stockroom-listen' AND pid <> pg_backend_pid()
"""


class Sampler(threading.Thread):
    """Samples the benchmark database's sessions on an event loop of its own until stopped."""

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

    def report(self) -> None:
        total = sum(self.active.values())
        print(f"sessions sampled: {dict(self.states)}; active samples by statement and wait:")
        for (query, wait), count in self.active.most_common(15):
            print(f"  {count / total:6.1%}  {wait:22}  {query}")


def backends_cpu() -> float:
    """User + system seconds of the backends connected to the benchmark's database."""
    pids = psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{DATABASE}'").split()
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(int(pid)).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def import_cpu(data: Path, rows: int, sampler: Sampler | None = None) -> tuple[float, float, float]:
    """Wall seconds, server CPU seconds, PostgreSQL CPU seconds of one import (sampled by
    ``sampler`` while it runs, if given)."""
    url = ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
    env = {
        **os.environ,
        "STOCKROOM_DATABASE_URL": f"{url}/{DATABASE}",
        "STOCKROOM_LOG_LEVEL": "warning",
        "STOCKROOM_AUTH": "off",
    }
    stockroom = [sys.executable, "-m", "stockroom"]
    subprocess.run([*stockroom, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([*stockroom, "serve", "--port", str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        process = psutil.Process(server.pid)
        server_before = sum(process.cpu_times()[:2])
        backends_before = backends_cpu()
        if sampler is not None:
            sampler.start()
        started = time.perf_counter()
        with data.open("rb") as body:
            response = httpx.post(
                f"{base}/items/import",
                content=body,
                headers={"content-type": "text/csv"},
                timeout=3600,
            )
        wall = time.perf_counter() - started
        server_cpu = sum(process.cpu_times()[:2]) - server_before
        backends = backends_cpu() - backends_before
        if sampler is not None:
            sampler.stopping.set()
            sampler.join()
        assert response.json()["created"] == rows, response.text[:300]
    finally:
        server.terminate()
        server.wait()
    return wall, server_cpu, backends


async def explain_one_batch() -> list[str]:
    """The plan of one more batch of new rows, in a transaction that is rolled back."""
    from stockroom.files.service import BATCH_ROWS
    from stockroom.items import _postgresql as items
    from stockroom.items.store import ValidRow

    connection = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE)
    try:
        await connection.execute(items._CREATE_SEEN_TABLE)
        await connection.execute(items._CREATE_BATCH_TABLE)
        now = dt.datetime.now(dt.UTC)
        rows = [
            ValidRow(n, f"P{n:09d}", f"Profile item {n}", f"profile item {n}", f"Number {n}", n,
                     n % 50)
            for n in range(BATCH_ROWS)
        ]  # fmt: skip
        await connection.copy_records_to_table(
            "stockroom_import_rows",
            records=items.batch_records(rows, now),
            columns=items._BATCH_COLUMNS,
        )
        transaction = connection.transaction()
        await transaction.start()
        try:
            plan = await connection.fetch(
                "EXPLAIN (ANALYZE, BUFFERS) " + items._INSERT_BATCH,
                *items.insert_batch_args(now, len(rows)),
            )
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    title = f"one more batch of {BATCH_ROWS:,} new rows, EXPLAIN (ANALYZE, BUFFERS), rolled back:"
    return [title, *("  " + row[0] for row in plan)]


async def copy_cpu(data: Path) -> tuple[float, float]:
    """Wall seconds and backend CPU seconds of COPY into the reference table."""
    connection = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE)
    try:
        await connection.execute(
            "CREATE TABLE copy_ref (id serial PRIMARY KEY, sku varchar(64) UNIQUE NOT NULL, "
            "name varchar(200) NOT NULL, description text, price numeric(12,2) NOT NULL, "
            "quantity integer NOT NULL)"
        )
        backend = psutil.Process(await connection.fetchval("SELECT pg_backend_pid()"))
        before = sum(backend.cpu_times()[:2])
        started = time.perf_counter()
        await connection.copy_to_table(
            "copy_ref",
            source=str(data),
            columns=["sku", "name", "description", "price", "quantity"],
            format="csv",
            header=True,
        )
        return time.perf_counter() - started, sum(backend.cpu_times()[:2]) - before
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="?", type=int, default=100_000)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    rows: int = args.rows
    data = Path(tempfile.mkdtemp(prefix="stockroom-bench-")) / "items.csv"
    write_rows(data, rows)
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    sampler = Sampler() if args.statements else None
    try:
        wall, server_cpu, backends = import_cpu(data, rows, sampler)
        plan = asyncio.run(explain_one_batch()) if args.explain else []
        copy_wall, copy_backend = asyncio.run(copy_cpu(data))
    finally:
        psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        data.unlink()

    def us(seconds: float) -> str:
        return f"{seconds / rows * 1e6:.1f} us/row"

    print(f"{rows:,} rows")
    print(f"import: {rows / wall:,.0f} rows/s; server {us(server_cpu)}, PostgreSQL {us(backends)}")
    print(f"COPY:   {rows / copy_wall:,.0f} rows/s; PostgreSQL {us(copy_backend)}")
    print(
        f"CPU ratio: {copy_backend / (server_cpu + backends):.3f}x one after the other, "
        f"{copy_backend / max(server_cpu, backends):.3f}x fully overlapped"
    )
    if sampler is not None:
        sampler.report()
    print("\n".join(plan))


if __name__ == "__main__":
    main()
