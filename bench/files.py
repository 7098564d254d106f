"""make bench-files: import and export 1,000,000 rows through a real `stockroom serve` on
PostgreSQL, against psql's COPY FROM / COPY TO of the same data on the same machine.

Writes results.md and results.json under bench/results/<UTC timestamp>/ and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from wrkrun import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench_files"
TARGETS = {"import": 0.3, "export": 0.5, "rss_mb": 200}


def psql(sql: str, database: str = "postgres") -> str:
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + database
    result = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def write_rows(path: Path, rows: int) -> None:
    with path.open("w", newline="") as out:
        out.write("sku,name,description,price,quantity\n")
        for n in range(rows):
            out.write(
                f'B{n:08d},Bench item {n},"A bench item, number {n}",'
                f"{n % 100_000}.{n % 100:02d},{n % 5000}\n"
            )


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)


def timed(label: str, work: callable) -> float:  # type: ignore[valid-type]
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows: int = args.rows
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ROOT / "bench" / "results" / stamp
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="stockroom-bench-"))
    data = work / "items.csv"
    print(f"generating {rows:,} rows ...", flush=True)
    write_rows(data, rows)

    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    url = ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
    env = {
        **os.environ,
        "STOCKROOM_DATABASE_URL": f"{url}/{DATABASE}",
        "STOCKROOM_LOG_LEVEL": "warning",
    }
    stockroom = [sys.executable, "-m", "stockroom"]
    key = subprocess.run(
        [*stockroom, "apikey", "create", "--name", "bench", "--scopes", "write"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen([*stockroom, "serve", "--port", str(port)], env=env)
    results: dict[str, float] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        rss = PeakRss(server.pid)
        rss.start()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=3600) as http:
            print("stockroom:", flush=True)

            def do_import() -> None:
                with data.open("rb") as body:
                    response = http.post(
                        "/items/import", content=body, headers={"content-type": "text/csv"}
                    )
                report = response.json()
                assert report["created"] == rows, report

            def do_export() -> None:
                with http.stream("GET", "/items/export") as response:
                    for _ in response.iter_bytes():
                        pass

            results["stockroom_import_s"] = timed("import", do_import)
            results["stockroom_export_s"] = timed("export", do_export)
        rss.running = False
        rss.join()
        results["stockroom_peak_rss_mb"] = rss.peak / 2**20
    finally:
        server.terminate()
        server.wait()

    print("psql COPY (reference):", flush=True)
    psql(
        "CREATE TABLE copy_ref (id serial PRIMARY KEY, sku varchar(64) UNIQUE NOT NULL, "
        "name varchar(200) NOT NULL, description text, price numeric(12,2) NOT NULL, "
        "quantity integer NOT NULL)",
        DATABASE,
    )
    results["copy_from_s"] = timed(
        "COPY FROM",
        lambda: psql(
            f"\\copy copy_ref (sku, name, description, price, quantity) FROM '{data}' CSV HEADER",
            DATABASE,
        ),
    )
    results["copy_to_s"] = timed(
        "COPY TO",
        lambda: psql(
            "\\copy (SELECT * FROM items ORDER BY id) TO '/dev/null' CSV HEADER", DATABASE
        ),
    )
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    data.unlink()

    imp = rows / results["stockroom_import_s"]
    exp = rows / results["stockroom_export_s"]
    copy_from = rows / results["copy_from_s"]
    copy_to = rows / results["copy_to_s"]
    table = [
        "| measure | stockroom | psql COPY | ratio | target |",
        "|---|---|---|---|---|",
        f"| import rows/s | {imp:,.0f} | {copy_from:,.0f} | {imp / copy_from:.2f}x | "
        f">= {TARGETS['import']}x |",
        f"| export rows/s | {exp:,.0f} | {copy_to:,.0f} | {exp / copy_to:.2f}x | "
        f">= {TARGETS['export']}x |",
        f"| server peak RSS | {results['stockroom_peak_rss_mb']:.0f} MB | | | "
        f"<= {TARGETS['rss_mb']} MB |",
    ]
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"{psql('SHOW server_version').strip()}"
    )
    text = "\n".join(
        [
            f"# bench-files {stamp}",
            "",
            f"{rows:,} rows. {machine}.",
            "Command: `make bench-files`",
            "",
            *table,
            "",
        ]
    )
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, **results}, indent=2))
    print()
    print(text)
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
