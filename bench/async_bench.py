"""make bench-async: each way of doing 50 ms of I/O under the same load (wrk, c=200, 10 s),
one uvicorn worker (uvloop, httptools) pinned to one core, on this machine.

Writes bench/results/<UTC timestamp>/async.md and .json, and chart.svg (bench/charts.py; also
docs/charts/async.svg), and prints the table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from wrkrun import free_port, run_wrk, write_chart

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = ["/io/async", "/io/def", "/io/blocking", "/db/async", "/db/def"]
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "200"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))


def wrk(url: str) -> dict[str, float]:
    result = run_wrk(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "10s", "--latency", url]
    )
    result["answered"] = result.pop("requests")
    return result


def main() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "uvicorn",
            "async_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(base + "/io/async")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        results = {}
        for endpoint in ENDPOINTS:
            httpx.get(base + endpoint, timeout=30)  # warm the pools
            results[endpoint] = wrk(base + endpoint)
            print(endpoint, results[endpoint], flush=True)
            time.sleep(1)
    finally:
        server.terminate()
        server.wait()
    ideal = CONNECTIONS / 0.05
    rows = [
        "| endpoint | how | rps | answered | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    how = {
        "/io/async": "`async def` + `await asyncio.sleep(0.05)`",
        "/io/def": "`def` + `time.sleep(0.05)` (thread pool)",
        "/io/blocking": "`async def` + `time.sleep(0.05)` (blocks the loop)",
        "/db/async": "`async def`, AsyncSession (asyncpg), `SELECT pg_sleep(0.05)`",
        "/db/def": "`def`, Session (psycopg) from a sync yield dependency",
    }
    for endpoint, r in results.items():
        rows.append(
            f"| `{endpoint}` | {how[endpoint]} | {r['rps']:,.0f} | {r['answered']:,} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']:.0f} |"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = "\n".join(
        [
            f"# bench-async {stamp}",
            "",
            f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s; one uvicorn worker on one core; "
            f"{os.cpu_count()} cores; Python {sys.version.split()[0]}. "
            f"Ideal for 50 ms of I/O at c={CONNECTIONS}: {ideal:,.0f} rps.",
            "",
            *rows,
            "",
        ]
    )
    out_dir = ROOT / "bench" / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "async.md").write_text(text)
    (out_dir / "async.json").write_text(json.dumps(results, indent=2))
    print()
    print(text)
    write_chart(out_dir, publish=True)  # and docs/charts/async.svg


if __name__ == "__main__":
    main()
