"""make bench-scale: how Stockroom's reads grow with its data (issue #25).

For each size (BENCH_SCALE_SIZES, default 10,000, 1,000,000 and 5,000,000 items), a
PostgreSQL database `stockroom_scale_<size>` is made once and reused by later runs while it
still holds that many items at the current migration: migrated by `stockroom migrate`,
seeded with set-based SQL (names of a colour, a thing and the item's number, so that `q` can
match many, few or no items; every 10th item out of stock, every 20th with a reorder point it
is at; an `initial` ledger row per item in stock, and item 1 with a 10,000-row history), then
VACUUMed and ANALYZEd. One `stockroom serve` on it, as shipped, on a free port; for each
request below, WARMUP requests, then SEQUENTIAL requests one after the other (p50 / p99), then
CONCURRENT workers of ROUNDS requests each (p50 / p99), all through httpx on 127.0.0.1: what
a client sees, HTTP included.

Requests: GET by id (random ids); the first page and a deep cursor page (half-way through
the table) of every sort; `q` matching many, few and no items; each filter alone and with
`q`; `count=true` alone, with a stock filter and with `q`; the ledger page of item 1 half-way
down its 10,000 rows; GET /items/summary; the export's first byte. The table printed shows
each one's p50 and p99 per size, and the ratio of the largest size's p99 to the smallest's
(the issue's target: at most 3x, and p99 <= 50 ms sequential at 5,000,000).

Also: each list request's statements EXPLAINed as the app runs them (custom plans), with a
verdict (an index finds the rows, or a scan bounded by a LIMIT, or a SCAN of the table); and
each `count=true` answer next to `count=exact`'s number (how close the estimates are).
`--smoke`: 2,000 items, 3 requests each. Results: bench/results/<UTC timestamp>-scale/
(results.md, results.json, chart.svg).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from wrkrun import write_chart

from stockroom.http import decode_cursor, encode_cursor
from stockroom.items._totals import CUSTOM_SERIAL_PLANS, totals_answer
from stockroom.items.repository import ItemFilter, Keyset, Listing

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SMOKE = "--smoke" in sys.argv[1:]
SIZES = [
    int(s)
    for s in os.environ.get(
        "BENCH_SCALE_SIZES", "2000" if SMOKE else "10000,1000000,5000000"
    ).split(",")
]
WARMUP = 1 if SMOKE else 3
SEQUENTIAL = 3 if SMOKE else 100
CONCURRENT = 16
ROUNDS = 1 if SMOKE else 5
LEDGER = 10_000
SORTS = ["id", "-id", "name", "-name", "price", "-price", "created_at", "-updated_at"]
COLOURS = ["red", "green", "blue", "black", "white", "grey", "oak", "pine", "steel", "brass"]

SEED_SQL = """
INSERT INTO items (id, sku, name, name_key, description, price_cents, quantity, version,
                   created_at, updated_at, reorder_point)
SELECT n,
       'SKU-' || lpad(n::text, 8, '0'),
       initcap(c.colour) || ' ' || t.thing || ' ' || n,
       c.colour || ' ' || t.thing || ' ' || n,
       NULL,
       (n * 37) % 100000,
       CASE WHEN n % 10 = 0 THEN 0 ELSE 1 + n % 100 END,
       1,
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second',
       CASE WHEN n % 20 = 0 THEN 5 END
FROM generate_series(1, $1::int) n
CROSS JOIN LATERAL (SELECT (ARRAY['red','green','blue','black','white','grey','oak','pine',
                                  'steel','brass'])[1 + n % 10] AS colour) c
CROSS JOIN LATERAL (SELECT (ARRAY['chair','table','shelf','lamp','rug','stool','desk',
                                  'bench','mirror','cabinet','sofa','vase'])[1 + n % 12]
                           AS thing) t;
"""
LEDGER_SQL = """
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT id, quantity, 'initial', quantity, created_at FROM items WHERE quantity > 0 AND id <> 1;
WITH d AS (
  SELECT n, CASE WHEN n = 1 THEN 500 WHEN n % 25 = 0 THEN 120 ELSE -4 - n % 3 END AS delta
  FROM generate_series(1, $1::int) n
)
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT 1, delta, CASE WHEN delta > 0 THEN 'delivery' ELSE 'sale' END,
       sum(delta) OVER (ORDER BY n), now() - ($1::int - n) * interval '1 minute'
FROM d ORDER BY n;
UPDATE items SET
  quantity = (SELECT quantity_after FROM adjustments WHERE item_id = 1 ORDER BY id DESC LIMIT 1),
  version = $1::int
WHERE id = 1;
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def env_for(url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")},
        "STOCKROOM_DATABASE_URL": url,
        "STOCKROOM_LOG_LEVEL": "warning",
    }


def stockroom(*args: str, url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stockroom", *args],
        env=env_for(url), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


async def prepare(size: int) -> tuple[str, bool]:
    """The size's database, made and seeded unless a reusable one is there; (its URL,
    whether it was reused)."""
    name = f"stockroom_scale_{size}"
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    if exists:
        connection = await asyncpg.connect(dsn)
        try:
            count = await connection.fetchval("SELECT count(*) FROM items")
            depth = await connection.fetchval("SELECT count(*) FROM adjustments WHERE item_id = 1")
        except asyncpg.PostgresError:
            count = depth = None
        finally:
            await connection.close()
        if count == size and depth == LEDGER:
            stockroom("migrate", url=url)  # a newer migration: applied to the kept data
            return url, True
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    stockroom("migrate", url=url)
    connection = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await connection.execute(SEED_SQL, size)
        await connection.execute("SELECT setval(pg_get_serial_sequence('items', 'id'), $1)", size)
        for statement in LEDGER_SQL.split(";"):
            if statement.strip():
                args = [LEDGER] if "$1" in statement else []
                await connection.execute(statement, *args)
        await connection.execute("VACUUM ANALYZE")  # no autovacuum of the new rows mid-run
        print(f"  seeded {size:,} items in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        await connection.close()
    return url, False


async def deep_cursors(url: str, size: int) -> dict[str, str]:
    """A cursor half-way through the table for every sort, as the API makes them."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    columns = {"id": "id", "name": "name_key", "price": "price_cents",
               "created_at": "created_at", "updated_at": "updated_at"}  # fmt: skip
    cursors: dict[str, str] = {}
    try:
        for sort in SORTS:
            key = sort.removeprefix("-")
            direction = "DESC" if sort.startswith("-") else "ASC"
            row = await connection.fetchrow(
                f"SELECT {columns[key]} AS value, id FROM items "
                f"ORDER BY {columns[key]} {direction}, id {direction} OFFSET $1 LIMIT 1",
                size // 2,
            )
            value = row["value"]
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            cursors[sort] = encode_cursor([sort, value, row["id"]])
        ledger = await connection.fetchval(
            "SELECT id FROM adjustments WHERE item_id = 1 ORDER BY id DESC OFFSET $1 LIMIT 1",
            LEDGER // 2,
        )
        cursors["ledger"] = encode_cursor(["-id", ledger])
    finally:
        await connection.close()
    return cursors


def requests_of(size: int, cursors: dict[str, str]) -> list[tuple[str, Any]]:
    """(name, path or a function of a random generator giving one)."""
    few = str(size // 2 + 4242 % max(size // 2, 1))  # an item number: a handful of names
    listed: list[tuple[str, Any]] = [
        ("GET /items/{id}", lambda rng: f"/items/{rng.randint(1, size)}"),
    ]
    for sort in SORTS:
        listed.append((f"first page, sort={sort}", f"/items?sort={sort}"))
        listed.append((f"deep page, sort={sort}", f"/items?sort={sort}&cursor={cursors[sort]}"))
    listed += [
        ("q many (a colour)", "/items?q=red"),
        ("q few (a number)", f"/items?q={few}"),
        ("q none", "/items?q=zzzz"),
        ("in_stock=false", "/items?in_stock=false"),
        ("low_stock=true", "/items?low_stock=true"),
        ("price range", "/items?min_price=100&max_price=105"),
        ("in_stock=false + q", "/items?in_stock=false&q=red"),
        ("low_stock=true + q", "/items?low_stock=true&q=red"),
        ("price range + q", "/items?min_price=100&max_price=105&q=red"),
        # Not `q=red&sort=name`: every red item's name starts with "red", so the walk of the
        # name index the planner picks reads 70% of it before the first (3.6 s at 5,000,000,
        # 2026-12-07 22:50Z): a limit of a search sorted on a column its matches cluster in
        # (docs/scaling.md).
        ("q few, sort=name", f"/items?q={few}&sort=name"),
        ("q few, sort=-price", f"/items?q={few}&sort=-price"),
        ("count=true", "/items?count=true"),
        ("count=true + in_stock=false", "/items?count=true&in_stock=false"),
        ("count=true + q", "/items?count=true&q=red"),
        ("count=true + q few", f"/items?count=true&q={few}"),
        ("count=true + price range + q", "/items?count=true&min_price=100&max_price=500&q=oak"),
        ("ledger: deep page of item 1", f"/items/1/adjustments?cursor={cursors['ledger']}"),
        ("GET /items/summary", "/items/summary"),
        ("export: first byte", "EXPORT"),
    ]
    return listed


async def one(http: httpx.AsyncClient, target: Any, rng: random.Random) -> float:
    path = target(rng) if callable(target) else target
    started = time.perf_counter()
    if path == "EXPORT":
        # Left unread after its first bytes: httpx closes that connection (the next request
        # opens another), and the server's COPY is cut off.
        async with http.stream("GET", "/items/export") as answer:
            assert answer.status_code == 200, answer.status_code
            async for _chunk in answer.aiter_raw():
                break
    else:
        answer = await http.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
    return (time.perf_counter() - started) * 1000


async def measure(base: str, key: str, size: int, cursors: dict[str, str]) -> dict[str, Any]:
    rng = random.Random(25)
    found: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as http:
        for name, target in requests_of(size, cursors):
            for _ in range(WARMUP):
                await one(http, target, rng)
            sequential = [await one(http, target, rng) for _ in range(SEQUENTIAL)]

            async def worker(http: httpx.AsyncClient = http, target: Any = target) -> list[float]:
                return [await one(http, target, rng) for _ in range(ROUNDS)]

            concurrent = [t for ts in await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
                          for t in ts]  # fmt: skip
            found[name] = {
                "sequential_ms": sequential,
                "concurrent_ms": concurrent,
                "p50": statistics.median(sequential),
                "p99": percentile(sequential, 99),
                "c16_p50": statistics.median(concurrent),
                "c16_p99": percentile(concurrent, 99),
            }
            row = found[name]
            print(f"  {name}: p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms; "
                  f"c={CONCURRENT} p50 {row['c16_p50']:.1f}, p99 {row['c16_p99']:.1f}",
                  flush=True)  # fmt: skip
    return found


# --- plans: each list request's statements, as the app runs them, EXPLAINed --------------------


_INDEX_NODES = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
_BLOCKING = {"Sort", "Incremental Sort", "Hash", "Aggregate", "Materialize", "Gather Merge"}


def _listing_of(path: str) -> tuple[Listing, str | None] | None:
    """The Listing a list request's query makes (as items.service does), and its `count`."""
    if not path.startswith("/items?") and path != "/items":
        return None
    query = dict(httpx.QueryParams(path.partition("?")[2]))
    cents = {k: round(float(query[k]) * 100) for k in ("min_price", "max_price") if k in query}
    where = ItemFilter(
        q=query.get("q"),
        min_price_cents=cents.get("min_price"),
        max_price_cents=cents.get("max_price"),
        in_stock=None if "in_stock" not in query else query["in_stock"] == "true",
        low_stock=None if "low_stock" not in query else query["low_stock"] == "true",
    )
    cursor = query.get("cursor")
    listing = Listing(
        where, Keyset(query.get("sort", "id")), decode_cursor(cursor) if cursor else None, 50
    )
    return listing, query.get("count")


def _nodes(plan: dict[str, Any], under_limit: bool = False) -> list[tuple[str, str, bool]]:
    """(node type, index or relation, whether a Limit is above it), depth first."""
    here = (plan["Node Type"], plan.get("Index Name") or plan.get("Relation Name") or "",
            under_limit)  # fmt: skip
    # A node that must read all its input first (a sort) ends what the LIMIT above bounds.
    below = plan["Node Type"] == "Limit" or (under_limit and plan["Node Type"] not in _BLOCKING)
    return [here, *(n for child in plan.get("Plans", []) for n in _nodes(child, below))]


def _verdict(nodes: list[tuple[str, str, bool]]) -> str:
    """'index' when an index finds the rows and nothing reads the whole table; 'bounded scan'
    when a table scan stops at a LIMIT (the capped count); 'sample'; else 'SCAN'."""
    scans = [n for n in nodes if n[0] == "Seq Scan" and n[1] == "items"]
    if any(n[0] == "Sample Scan" for n in nodes):
        return "sample"
    if scans:
        return "bounded scan" if all(limited for _, _, limited in scans) else "SCAN"
    return "index" if any(n[0] in _INDEX_NODES for n in nodes) else "other"


async def explain_all(url: str, requests: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """For each list request, its statements' plans (the page's and, with count=true and a
    filter the totals do not answer, the capped count's), custom-planned as the app has them."""
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

    dialect = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
    # JIT off, as on the app's connections.
    connection = await asyncpg.connect(
        url.replace("postgresql+asyncpg://", "postgresql://"), server_settings={"jit": "off"}
    )
    found: dict[str, list[str]] = {}
    try:
        for name, target in requests:
            made = _listing_of(target) if isinstance(target, str) else None
            if made is None:
                continue
            listing, count = made
            statements = [listing.select()]
            if count == "true" and not totals_answer(listing.where):
                statements.append(listing.capped_count())
            params = listing.params()
            verdicts = []
            for statement in statements:
                compiled = statement.compile(dialect=dialect)
                args = [params[n] for n in compiled.positiontup or ()]
                # Planned as the app plans these statements (items._postgresql._planned).
                async with connection.transaction():
                    await connection.execute(CUSTOM_SERIAL_PLANS)
                    plan = await connection.fetchval(
                        "EXPLAIN (FORMAT JSON) " + compiled.string, *args
                    )
                nodes = _nodes(json.loads(plan)[0]["Plan"])
                shown = " > ".join(f"{t}({what})" if what else t for t, what, _ in nodes)
                verdicts.append(f"{_verdict(nodes)}: {shown}")
            found[name] = verdicts
    finally:
        await connection.close()
    return found


async def counted(base: str, key: str, requests: list[tuple[str, Any]]) -> dict[str, Any]:
    """For each count=true request: its total and total_exact, and count=exact's number."""
    found: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as http:
        for name, target in requests:
            if not isinstance(target, str) or "count=true" not in target:
                continue
            answer = (await http.get(target)).json()
            exact = (await http.get(target.replace("count=true", "count=exact"))).json()
            found[name] = {"total": answer["total"], "total_exact": answer["total_exact"],
                           "exact": exact["total"]}  # fmt: skip
    return found


def serve(url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "stockroom", "serve", "--host", "127.0.0.1", "--port",
             str(port)],
            env=env_for(url), stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"stockroom serve exited: see {log}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("stockroom serve did not start")


def main() -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"{stamp}-scale{'-smoke' if SMOKE else ''}"
    out.mkdir(parents=True)
    results: dict[str, Any] = {"sizes": {}}
    for size in SIZES:
        print(f"{size:,} items:", flush=True)
        url, reused = asyncio.run(prepare(size))
        cursors = asyncio.run(deep_cursors(url, size))
        key = stockroom("apikey", "create", "--name", f"scale-{stamp}", "--scopes", "read",
                        url=url)  # fmt: skip
        plans = asyncio.run(explain_all(url, requests_of(size, cursors)))
        server, base = serve(url, out / f"server-{size}.log")
        try:
            measured = asyncio.run(measure(base, key, size, cursors))
            counts = asyncio.run(counted(base, key, requests_of(size, cursors)))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        results["sizes"][str(size)] = {"reused": reused, "requests": measured, "plans": plans,
                                       "counts": counts}  # fmt: skip

    small, large = str(min(SIZES)), str(max(SIZES))
    header = (
        "| request | "
        + " | ".join(f"{int(s):,}: p50 / p99 ms (c={CONCURRENT} p99)" for s in results["sizes"])
        + f" | p99 {int(large):,} / {int(small):,} |"
    )
    lines = [header, "|---" * (len(results["sizes"]) + 2) + "|"]
    names = list(results["sizes"][small]["requests"])
    for name in names:
        cells = []
        for size_key in results["sizes"]:
            row = results["sizes"][size_key]["requests"][name]
            cells.append(f"{row['p50']:.1f} / {row['p99']:.1f} ({row['c16_p99']:.0f})")
        ratio = (results["sizes"][large]["requests"][name]["p99"]
                 / max(results["sizes"][small]["requests"][name]["p99"], 0.001))  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.1f}x |")
    plan_lines = [f"| request | plan at {int(large):,} items |", "|---|---|"]
    for name, verdicts in results["sizes"][large]["plans"].items():
        plan_lines.append(f"| {name} | " + "<br>".join(verdicts) + " |")
    count_lines = ["| request | " + " | ".join(
        f"{int(s):,}: total (exact?) / count=exact" for s in results["sizes"]) + " |",
        "|---" * (len(results["sizes"]) + 1) + "|"]  # fmt: skip
    for name in results["sizes"][small]["counts"]:
        cells = []
        for size_key in results["sizes"]:
            c = results["sizes"][size_key]["counts"][name]
            cells.append(f"{c['total']:,} ({'exact' if c['total_exact'] else 'estimate'}) / "
                         f"{c['exact']:,}")  # fmt: skip
        count_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    machine = (f"{os.cpu_count()} cores, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    text = "\n".join([
        f"# bench-scale {stamp}" + (" (smoke: not a measurement)" if SMOKE else ""),
        "",
        machine,
        f"Sequential: {SEQUENTIAL} requests each after {WARMUP} warm-up; c={CONCURRENT}: "
        f"{CONCURRENT} workers x {ROUNDS}. Through one `stockroom serve`, httpx on 127.0.0.1. "
        "Command: `make bench-scale`" + (" (BENCH_SCALE_SIZES=" + ",".join(map(str, SIZES))
                                         + ")"),
        "",
        *lines,
        "",
        "Plans (EXPLAIN of each list request's statements as the app runs them, custom-planned;",
        "'index': an index finds the rows; 'bounded scan': a table scan that stops at a LIMIT):",
        "",
        *plan_lines,
        "",
        "Counts (count=true's answer against count=exact's):",
        "",
        *count_lines,
    ])  # fmt: skip
    print("\n" + text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out}")
    write_chart(out, publish=not SMOKE)  # docs/charts/scale.svg: not a smoke run


if __name__ == "__main__":
    main()
