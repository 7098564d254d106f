"""make bench-files: import and export 1,000,000 rows through a real `stockroom serve` on
PostgreSQL, against psql's COPY FROM / COPY TO of the same data on the same machine.

Two references for the import, in the same run:
- **same tables** (the target's reference): psql `COPY` of the rows the import wrote into the
  tables it wrote them to, in a fresh database made by `stockroom migrate` (the same indexes,
  foreign key and trigger): the `items` rows, the `import` rows of `adjustments` and the
  `events` rows with their bodies, dumped from Stockroom's database after the import (COPY
  TO, not timed) and copied in one psql session, one transaction (`seq` and `txid` from the
  column defaults, as for the import);
- **plain table** (the old one): psql `COPY` of the CSV file into a table of its five
  columns with two indexes.
The export is against `COPY (SELECT * FROM items ORDER BY id) TO` /dev/null.

Writes results.md, results.json and chart.svg (bench/charts.py; also docs/charts/files.svg
from 100,000 rows up) under bench/results/<UTC timestamp>/ and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from wrkrun import free_port, wait_healthy, write_chart

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench_files"
REFERENCE = "stockroom_bench_files_ref"  # the same tables, for the COPY reference
TARGETS = {"import": 0.70, "export": 0.6, "rss_mb": 200}  # import: x the same-tables COPY (#25)
# What the import wrote, per table: (table, columns copied, the rows of it); the rest of the
# columns (events.seq and txid) come from their defaults, as for the import.
COPIED = (
    ("items", "id, sku, name, name_key, description, price_cents, quantity, version, "
     "created_at, updated_at", "SELECT {columns} FROM items ORDER BY id"),
    ("adjustments", "id, item_id, delta, reason, quantity_after, created_at",
     "SELECT {columns} FROM adjustments ORDER BY id"),
    ("events", "id, type, body, created_at", "SELECT {columns} FROM events ORDER BY seq"),
)  # fmt: skip
COUNTS_SQL = """
SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM adjustments),
       (SELECT count(*) FROM adjustments WHERE reason = 'import'),
       (SELECT count(*) FROM events WHERE type = 'item.created'),
       (SELECT count(*) FROM events WHERE type = 'stock.adjusted'), (SELECT count(*) FROM events)
"""


def psql(sql: str, database: str = "postgres") -> str:
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + database
    result = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def psql_script(script: str, database: str) -> str:
    """Run a psql script (backslash commands too) in one session; its output."""
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + database
    result = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-X", "-f", "-"],
        input=script,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def counts(database: str) -> dict[str, int]:
    names = ("items", "adjustments", "import_adjustments", "item_created", "stock_adjusted",
             "events")  # fmt: skip
    values = psql(COUNTS_SQL, database).strip().split("|")
    return dict(zip(names, (int(v) for v in values), strict=True))


def same_tables_copy(work: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """COPY the rows the import wrote into the same tables of a fresh database: the seconds
    of the one session that copies all three tables, and each table's COPY (psql's timing)."""
    for table, columns, query in COPIED:
        psql(f"\\copy ({query.format(columns=columns)}) TO '{work / table}.copy'", DATABASE)
    psql(f"DROP DATABASE IF EXISTS {REFERENCE} WITH (FORCE)")
    psql(f"CREATE DATABASE {REFERENCE}")
    url = env["STOCKROOM_DATABASE_URL"].rsplit("/", 1)[0] + f"/{REFERENCE}"
    subprocess.run([sys.executable, "-m", "stockroom", "migrate"], env={**env,
                   "STOCKROOM_DATABASE_URL": url}, check=True, capture_output=True)  # fmt: skip
    script = "\\timing on\nBEGIN;\n" + "".join(
        f"\\copy {table} ({columns}) FROM '{work / table}.copy'\n"
        for table, columns, _query in COPIED
    ) + "COMMIT;\n"  # fmt: skip
    started = time.perf_counter()
    out = psql_script(script, REFERENCE)
    seconds = time.perf_counter() - started
    times = [float(t) / 1000 for t in re.findall(r"^Time: ([\d.]+) ms", out, re.MULTILINE)]
    per_table = dict(zip([t for t, _c, _q in COPIED], times[1:4], strict=False))
    print(
        f"  COPY into the same tables: {seconds:.1f} s ("
        + ", ".join(f"{t} {s:.2f} s" for t, s in per_table.items())
        + ")",
        flush=True,
    )
    for table, _columns, _query in COPIED:
        (work / f"{table}.copy").unlink()
    return seconds, per_table


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

    print("psql COPY (references):", flush=True)
    written = counts(DATABASE)
    results["same_tables_copy_s"], same_tables = same_tables_copy(work, env)
    copied = counts(REFERENCE)
    print(f"  rows: the import wrote {written}; the same-tables COPY {copied}", flush=True)
    psql(f"DROP DATABASE IF EXISTS {REFERENCE} WITH (FORCE)")
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
    copy_same = rows / results["same_tables_copy_s"]
    copy_to = rows / results["copy_to_s"]
    rss = results["stockroom_peak_rss_mb"]

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    same_ratio, export_ratio = imp / copy_same, exp / copy_to
    table = [
        "| measure | stockroom | psql COPY | ratio | target | met |",
        "|---|---|---|---|---|---|",
        f"| import rows/s, against COPY into the same tables | {imp:,.0f} "
        f"({results['stockroom_import_s']:.1f} s) | {copy_same:,.0f} "
        f"({results['same_tables_copy_s']:.1f} s) | {same_ratio:.2f}x | "
        f">= {TARGETS['import']:.2f}x | {met(same_ratio >= TARGETS['import'])} |",
        f"| import rows/s, against COPY into a plain table | {imp:,.0f} | {copy_from:,.0f} "
        f"({results['copy_from_s']:.1f} s) | {imp / copy_from:.2f}x | (the old reference) | |",
        f"| export rows/s | {exp:,.0f} ({results['stockroom_export_s']:.1f} s) | {copy_to:,.0f} "
        f"({results['copy_to_s']:.1f} s) | {export_ratio:.2f}x | >= {TARGETS['export']}x "
        f"| {met(export_ratio >= TARGETS['export'])} |",
        f"| server peak RSS | {rss:.0f} MB | | | <= {TARGETS['rss_mb']} MB "
        f"| {met(rss <= TARGETS['rss_mb'])} |",
    ]
    same_note = (
        "COPY into the same tables (one session, one transaction): "
        + ", ".join(f"{t} {s:.2f} s" for t, s in same_tables.items())
        + f". Rows the import wrote: {written}; rows the COPY wrote: {copied}"
        + (" (the same)." if written == copied else " (**not the same**).")
    )
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
            same_note,
            "",
        ]
    )
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "rows": rows,
                **results,
                "same_tables_copy_per_table_s": same_tables,
                "written": written,
                "copied": copied,
            },
            indent=2,
        )
    )
    print()
    print(text)
    print(f"written to {out_dir}")
    write_chart(out_dir, publish=rows >= 100_000)  # docs/charts/files.svg: not a smoke run


if __name__ == "__main__":
    main()
