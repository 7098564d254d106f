"""make bench-console: the web console as a user meets it, in Debian's Chromium (headless,
through Playwright, the flags of tests/console), against one `stockroom serve` on
PostgreSQL.

The database (its own, DATABASE below) is created afresh, migrated by `stockroom migrate`
and seeded with set-based SQL: ITEMS items, each with its `initial` ledger row, and item 1
with a LEDGER-row history (quantity_after the running sum of the deltas, the item's quantity
the last of them: the ledger invariant holds). One tab signs in with an admin key once; then:

- items: a fresh load of /console/#/items (about:blank first, so each is a new document),
  from navigation start (the document's performance.now() origin) to the first row of the
  table shown; LOADS loads, p50 and p95 (target p95 <= 1 s).
- chart: the same for /console/#/items/1 (its LEDGER-row history), two figures per load:
  first draw, until the uPlot canvas is in the chart's box and the ledger table shows its
  first rows (reported); whole history, until the chart's caption says it shows all of them
  ("Quantity over time: all 10,000 changes."; the chart takes them in one request to
  GET /items/{id}/history; target <= 300 ms, read against p95). CHART_LOADS loads; the
  last load's requests (what, when) are kept in results.json as `chart_waterfall`.
- live: the items list open (the live stream connected), an adjustment of item 2 made through
  the API (httpx), timed from just before the POST until the row shows the new quantity;
  CHANGES changes, p50 and p95 (target p95 <= 1 s).
- first visit: a fresh browser context (no cache) signs in and lands on the items list;
  every /console/ request it makes (the icon is asked for twice, and counted so), counted as
  transferred when the server compressed it, else as gzip would send it (target < 120 kB);
  and the same with an item's page (uPlot) after.

Times in the page are read once per animation frame (Playwright's `polling="raf"`): what a
user could see. `--smoke` (1,000 items, 3 loads and changes) checks that the script runs;
its figures are not measurements. Env overrides: BENCH_ITEMS, BENCH_LEDGER, BENCH_LOADS,
BENCH_CHART_LOADS, BENCH_CHANGES, BENCH_POSTGRES_DSN; STOCKROOM_* settings pass through to
the server.
Everything listens on 127.0.0.1; the server, the browser and the database are removed at
the end. Writes results.md and results.json under bench/results/<UTC timestamp>/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from playwright.async_api import BrowserContext, Page, Response, ViewportSize, async_playwright
from wrkrun import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench_console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [  # as tests/console/test_console.py launches it
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
TARGETS = {
    "items_p95_ms": 1000.0,
    "chart_ms": 300.0,
    "live_p95_ms": 1000.0,
    "first_visit_bytes": 120_000,
}
TIMEOUT_MS = 30_000

SEED_SQL = """
INSERT INTO items (id, sku, name, name_key, description, price_cents, quantity, version,
                   created_at, updated_at)
SELECT n, 'BENCH-' || lpad(n::text, 6, '0'), 'Bench item ' || n, 'bench item ' || n,
       CASE WHEN n % 3 = 0 THEN NULL ELSE 'A bench item, number ' || n END,
       (n * 37) % 100000, 1000 + n % 100, 1,
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second'
FROM generate_series(1, $1::int) n;
"""
# Every item but 1 has its `initial` row; item 1 a long history: a first delivery, then
# sales and deliveries in a saw-tooth, one an hour up to now; quantity_after is the running
# sum, and the item's quantity and version follow its last row.
LEDGER_SQL = """
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT id, quantity, 'initial', quantity, created_at FROM items WHERE id <> 1;
WITH d AS (
  SELECT n,
         CASE WHEN n = 1 THEN 500 WHEN n % 25 = 0 THEN 120 ELSE -4 - n % 3 END AS delta,
         now() - ($1::int - n) * interval '1 hour' AS at
  FROM generate_series(1, $1::int) n
)
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT 1, delta,
       CASE WHEN n = 1 THEN 'initial' WHEN delta > 0 THEN 'delivery' ELSE 'sale' END,
       sum(delta) OVER (ORDER BY n), at
FROM d ORDER BY n;
UPDATE items SET
  quantity = (SELECT quantity_after FROM adjustments WHERE item_id = 1 ORDER BY id DESC LIMIT 1),
  version = $1::int, updated_at = now()
WHERE id = 1;
"""
INVARIANT_SQL = """
SELECT count(*) FILTER (WHERE coalesce(a.total, 0) <> i.quantity)
FROM items i LEFT JOIN (SELECT item_id, sum(delta) AS total FROM adjustments GROUP BY item_id) a
  ON a.item_id = i.id
"""
RUNNING_SQL = """
SELECT count(*) FROM (
  SELECT quantity_after, sum(delta) OVER (ORDER BY id) AS running
  FROM adjustments WHERE item_id = 1) r
WHERE quantity_after <> running OR quantity_after < 0
"""

# What the page shows, read in the page (each returns performance.now() once it is so).
ITEMS_SHOWN = """() => {
  const row = document.querySelector("section.items tbody tr td a");
  return row ? performance.now() : false;
}"""
CHART_SHOWN = """() => {
  const canvas = document.querySelector("section.ledger .chart-box canvas");
  const row = document.querySelector("section.ledger tbody tr td time");
  return canvas && row ? performance.now() : false;
}"""
# The chart's caption once every page of the history is drawn (console/chart.js).
HISTORY_SHOWN = """() => {
  const caption = document.querySelector("section.ledger figure.chart figcaption");
  return caption && caption.textContent.startsWith("Quantity over time: all ")
    ? performance.now()
    : false;
}"""
QUANTITY_SHOWN = """([sku, quantity]) => {
  for (const code of document.querySelectorAll("section.items tbody tr td code")) {
    if (code.textContent === sku) {
      const cell = code.closest("tr").querySelectorAll("td.number")[1];
      return cell.textContent.replace(/\\D/g, "") === String(quantity);
    }
  }
  return false;
}"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def prepare_database(dsn: str, items: int, ledger: int) -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        return str(await admin.fetchval("SHOW server_version"))
    finally:
        await admin.close()


async def seed(dsn: str, items: int, ledger: int) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute(SEED_SQL.replace("$1::int", str(int(items))))
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('items', 'id'), $1)", items
            )
            await connection.execute(LEDGER_SQL.replace("$1::int", str(int(ledger))))
        await connection.execute("ANALYZE")
        broken = await connection.fetchval(INVARIANT_SQL)
        inconsistent = await connection.fetchval(RUNNING_SQL)
        rows = await connection.fetchval("SELECT count(*) FROM adjustments WHERE item_id = 1")
        if broken or inconsistent or rows != ledger:
            raise RuntimeError(f"seed: {broken} items off their ledger, {inconsistent} bad rows")
        return {"items": items, "ledger_rows_of_item_1": int(rows)}
    finally:
        await connection.close()


async def drop_database() -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    finally:
        await admin.close()


def wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError("stockroom serve stopped; see its log")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("stockroom serve did not start")


async def sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(f"{base}/console/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Items", level=1).wait_for(timeout=TIMEOUT_MS)
    await page.get_by_role("status").filter(has_text="Live").wait_for(timeout=TIMEOUT_MS)


def _all_shown(conditions: tuple[str, ...]) -> str:
    """One check of every condition per animation frame, each one's time kept the first
    frame it holds: waiting for them one after the other would add a round trip to the page
    and a frame to each later one."""
    return f"""() => {{
  const seen = (window.__benchSeen ||= []);
  const checks = [{", ".join(conditions)}];
  checks.forEach((check, i) => {{
    if (seen[i] === undefined) {{
      const shown = check();
      if (shown !== false) seen[i] = shown;
    }}
  }});
  return seen.filter((t) => t !== undefined).length === checks.length ? seen : false;
}}"""


async def timed_load(page: Page, url: str, *shown: str) -> list[float]:
    """A new document at ``url``; milliseconds from its navigation start to each of
    ``shown`` (each a function that answers ``performance.now()`` once it holds)."""
    await page.goto("about:blank")
    await page.goto(url, wait_until="commit")
    handle = await page.wait_for_function(_all_shown(shown), polling="raf", timeout=TIMEOUT_MS)
    return [float(t) for t in await handle.json_value()]


async def loads(page: Page, url: str, shown: str, count: int) -> list[float]:
    await timed_load(page, url, shown)  # a warm-up, not counted
    return [(await timed_load(page, url, shown))[0] for _ in range(count)]


async def chart_loads(page: Page, url: str, count: int) -> tuple[list[float], list[float]]:
    """``count`` loads of an item's page: (first draw, whole history drawn) of each."""
    await timed_load(page, url, CHART_SHOWN, HISTORY_SHOWN)  # a warm-up, not counted
    first, whole = [], []
    for _ in range(count):
        drawn, complete = await timed_load(page, url, CHART_SHOWN, HISTORY_SHOWN)
        first.append(drawn)
        whole.append(complete)
    return first, whole


WATERFALL = """() => performance.getEntriesByType("resource").map((entry) => ({
  url: entry.name.replace(location.origin, ""),
  start: Math.round(entry.startTime),
  end: Math.round(entry.responseEnd),
}))"""


async def waterfall(page: Page) -> list[dict[str, Any]]:
    """What the last load fetched, when (ms from its navigation): where its time went."""
    found: list[dict[str, Any]] = await page.evaluate(WATERFALL)
    return found


async def live_changes(page: Page, base: str, key: str, count: int) -> list[float]:
    """Adjust item 2 through the API ``count`` times; each: ms from before the POST until
    the open items list shows its new quantity."""
    await page.goto("about:blank")
    await page.goto(f"{base}/console/#/items")
    await page.get_by_role("status").filter(has_text="Live").wait_for(timeout=TIMEOUT_MS)
    await page.wait_for_function(ITEMS_SHOWN, polling="raf", timeout=TIMEOUT_MS)
    took: list[float] = []
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as http:
        sku = (await http.get("/items/2")).json()["sku"]
        for n in range(count):
            await asyncio.sleep(0.2)  # apart: one change at a time
            start = time.perf_counter()
            answer = await http.post("/items/2/adjustments", json={"delta": 1 if n % 2 else -1})
            answer.raise_for_status()
            quantity = answer.json()["quantity_after"]
            await page.wait_for_function(
                QUANTITY_SHOWN, arg=[sku, quantity], polling="raf", timeout=TIMEOUT_MS
            )
            took.append((time.perf_counter() - start) * 1000)
    return took


async def first_visit(context: BrowserContext, base: str, key: str) -> dict[str, Any]:
    """Every /console/ file a fresh context loads: signing in and the items list, then an
    item's page (which adds the chart library)."""
    page = await context.new_page()
    responses: list[Response] = []
    page.on("response", lambda response: responses.append(response))

    async def count() -> tuple[int, list[dict[str, Any]]]:
        total, files = 0, []
        for response in responses:
            if "/console/" not in response.url:
                continue
            body = await response.body()
            if response.headers.get("content-encoding"):
                size = (await response.request.sizes())["responseBodySize"]
                how = response.headers["content-encoding"]
            else:
                size, how = len(gzip.compress(body)), "gzip here"
            files.append(
                {"url": response.url.split("/console/", 1)[1] or "index.html", "bytes": size,
                 "raw_bytes": len(body), "encoding": how}
            )  # fmt: skip
            total += size
        return total, files

    await sign_in(page, base, key)
    await page.wait_for_function(ITEMS_SHOWN, polling="raf", timeout=TIMEOUT_MS)
    await page.wait_for_load_state("networkidle")
    visit, visit_files = await count()
    await page.goto(f"{base}/console/#/items/1")
    await page.wait_for_function(CHART_SHOWN, polling="raf", timeout=TIMEOUT_MS)
    await page.wait_for_load_state("networkidle")
    with_item, item_files = await count()
    await page.close()
    return {
        "first_visit_bytes": visit,
        "first_visit_files": visit_files,
        "with_item_bytes": with_item,
        "with_item_files": item_files,
    }


async def browse(base: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport=VIEWPORT,
            )
            try:
                results["chromium"] = context.browser.version if context.browser else ""
                page = await context.new_page()
                await sign_in(page, base, key)
                print(f"items: {args.loads} loads ...", flush=True)
                results["items_ms"] = await loads(
                    page, f"{base}/console/#/items", ITEMS_SHOWN, args.loads
                )
                print(f"chart: {args.chart_loads} loads ...", flush=True)
                results["chart_ms"], results["history_ms"] = await chart_loads(
                    page, f"{base}/console/#/items/1", args.chart_loads
                )
                results["chart_waterfall"] = await waterfall(page)
                print(f"live: {args.changes} changes ...", flush=True)
                results["live_ms"] = await live_changes(page, base, key, args.changes)
                await page.close()
            finally:
                await context.close()
            print("first visit ...", flush=True)
            fresh = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            try:
                context = await fresh.new_context(viewport=VIEWPORT)
                results.update(await first_visit(context, base, key))
                await context.close()
            finally:
                await fresh.close()
    return results


def measure(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE
    results: dict[str, Any] = {
        "pg_version": asyncio.run(prepare_database(dsn, args.items, args.ledger))
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")},
        "STOCKROOM_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://"),
        "STOCKROOM_LOG_LEVEL": "warning",
        **{k: v for k, v in os.environ.items() if k.startswith("STOCKROOM_")},
    }
    stockroom = [sys.executable, "-m", "stockroom"]
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*stockroom, "migrate"], env=env, check=True, capture_output=True)
        print(f"seeding {args.items:,} items, a {args.ledger:,}-row ledger ...", flush=True)
        results["seed"] = asyncio.run(seed(dsn, args.items, args.ledger))
        key = subprocess.run(
            [*stockroom, "apikey", "create", "--name", "bench-console", "--scopes", "admin"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with (out_dir / "server.log").open("w") as sink:
            server = subprocess.Popen(
                [*stockroom, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        wait_healthy(base, server)
        results.update(asyncio.run(browse(base, key, args)))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        asyncio.run(drop_database())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1,000 items, 3 loads: does it run")
    parser.add_argument("--items", type=int, default=int(os.environ.get("BENCH_ITEMS", 100_000)))
    parser.add_argument("--ledger", type=int, default=int(os.environ.get("BENCH_LEDGER", 10_000)))
    parser.add_argument("--loads", type=int, default=int(os.environ.get("BENCH_LOADS", 20)))
    parser.add_argument(
        "--chart-loads", type=int, default=int(os.environ.get("BENCH_CHART_LOADS", 10))
    )
    parser.add_argument("--changes", type=int, default=int(os.environ.get("BENCH_CHANGES", 20)))
    args = parser.parse_args()
    if args.smoke:
        args.items, args.loads, args.chart_loads, args.changes = 1_000, 3, 3, 3
        args.ledger = min(args.ledger, 10_000)
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: make ensure-chromium installs Debian's chromium")

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ROOT / "bench" / "results" / (stamp + ("-smoke" if args.smoke else ""))
    out_dir.mkdir(parents=True)
    r = measure(args, out_dir)

    yes = {True: "met", False: "**not met**"}
    items_p50, items_p95 = percentile(r["items_ms"], 50), percentile(r["items_ms"], 95)
    chart_p50, chart_p95 = percentile(r["chart_ms"], 50), percentile(r["chart_ms"], 95)
    whole_p50, whole_p95 = percentile(r["history_ms"], 50), percentile(r["history_ms"], 95)
    live_p50, live_p95 = percentile(r["live_ms"], 50), percentile(r["live_ms"], 95)
    table = [
        "| measure | p50 | p95 | target | |",
        "|---|---|---|---|---|",
        f"| items list: navigation -> first rows ({len(r['items_ms'])} loads) "
        f"| {items_p50:,.0f} ms | {items_p95:,.0f} ms | p95 <= 1,000 ms "
        f"| {yes[items_p95 <= TARGETS['items_p95_ms']]} |",
        f"| item with a {args.ledger:,}-row ledger: navigation -> chart's first draw and the "
        f"ledger table's first rows ({len(r['chart_ms'])} loads) | {chart_p50:,.0f} ms "
        f"| {chart_p95:,.0f} ms | (reported) | |",
        f"| the same: navigation -> the whole {args.ledger:,}-row history drawn (caption "
        f'"all ... changes") ({len(r["history_ms"])} loads) | {whole_p50:,.0f} ms '
        f"| {whole_p95:,.0f} ms | <= 300 ms (p95) | {yes[whole_p95 <= TARGETS['chart_ms']]} |",
        f"| adjustment via the API -> shown in the open items list ({len(r['live_ms'])} changes) "
        f"| {live_p50:,.0f} ms | {live_p95:,.0f} ms | p95 <= 1,000 ms "
        f"| {yes[live_p95 <= TARGETS['live_p95_ms']]} |",
        f"| first visit (sign-in, items list): /console/ files, compressed "
        f"({len(r['first_visit_files'])} files) | {r['first_visit_bytes'] / 1000:,.1f} kB | "
        f"| < 120 kB | {yes[r['first_visit_bytes'] < TARGETS['first_visit_bytes']]} |",
        f"| the same, then an item's page (chart library) ({len(r['with_item_files'])} files) "
        f"| {r['with_item_bytes'] / 1000:,.1f} kB | | (< 120 kB) "
        f"| {yes[r['with_item_bytes'] < TARGETS['first_visit_bytes']]} |",
    ]
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {r['pg_version']}, Chromium {r['chromium']}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    text = "\n".join(
        [
            f"# bench-console {stamp}" + (" (smoke: not a measurement)" if args.smoke else ""),
            "",
            machine,
            f"{r['seed']['items']:,} items; item 1 with {r['seed']['ledger_rows_of_item_1']:,} "
            "ledger rows. Command: "
            + (
                "`.venv/bin/python bench/console.py --smoke`"
                if args.smoke
                else "`make bench-console`"
            ),
            "",
            *table,
            "",
        ]
    )
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps({"args": vars(args), **r}, indent=2))
    print()
    print(text)
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
