"""CPU per imported row: the `stockroom serve` process and its PostgreSQL backends, against the
backend of a COPY of the same file, on PostgreSQL. Wall-clock rows/s swing with whatever else
runs on the machine; CPU seconds per row much less.

    .venv/bin/python bench/files_cpu.py [ROWS]   (default 100,000; needs psql)

The psutil CPU times of the backends are read from the processes PostgreSQL runs for the
benchmark's database, so it must run on the database's host.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from wrkrun import free_port, wait_healthy

from files import ADMIN_DSN, psql, write_rows

DATABASE = "stockroom_bench_files_cpu"


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


def import_cpu(data: Path, rows: int) -> tuple[float, float, float]:
    """Wall seconds, server CPU seconds, PostgreSQL CPU seconds of one import."""
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
        assert response.json()["created"] == rows, response.text[:300]
    finally:
        server.terminate()
        server.wait()
    return wall, server_cpu, backends


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
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = Path(tempfile.mkdtemp(prefix="stockroom-bench-")) / "items.csv"
    write_rows(data, rows)
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    try:
        wall, server_cpu, backends = import_cpu(data, rows)
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


if __name__ == "__main__":
    main()
