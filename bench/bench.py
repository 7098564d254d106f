"""make bench: Stockroom against a bare Starlette + asyncpg reference (the ceiling) and the
SQLModel tutorial pattern, on one PostgreSQL database of 10,000 items, in the same run.

Each server is one uvicorn process pinned to core 0 (`taskset -c 0`); wrk runs on core 1.
Every scenario runs the servers in rounds (A B C A B C, BENCH_ROUNDS rounds of
BENCH_SECONDS s each, after a 2 s warm-up per server). All three get the same URLs, and the
same pseudo-random ids from the same seed. The list is keyset-paged: `?limit=50&cursor=C`
where C is Stockroom's own cursor for a random start id (`["id", n, n]`, base64url), which
the other two decode the same way.

Then the checks of the speed issue on Stockroom alone: GET by id at c=1024 (keeps answering,
no 5xx), the event-loop lag p99 during its GET runs (its own /metrics), p99 <= 3x p50, and
the ledger invariant after the adjustment runs. Every target is printed as met or not.

Writes results.md and results.json under bench/results/<UTC timestamp>/ and prints the table.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from wrkrun import free_port, run_wrk

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench"
ITEMS = 10_000
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
WARMUP_SECONDS = 2
SERVERS = ["stockroom", "bare", "tutorial"]
TARGETS = {"get-c64": 0.80, "get-c256": 0.80, "list-c64": 0.80,
           "adjust-hot-c64": 0.50, "adjust-random-c64": 0.50}  # fmt: skip
GET_SCENARIOS = ("get-c64", "get-c256")
HUGE_CONNECTIONS = 1024
MAX_TAIL_RATIO = 3.0  # p99 <= 3x p50
MAX_LOOP_LAG_P99 = 0.010  # seconds
LAG_METRIC = "stockroom_event_loop_lag_seconds_bucket"
METRICS_TIMEOUT = 60  # a server just out of a c=1024 run may take a while to answer


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    script: str  # Lua body; `request` builds each request
    what: str


SEED = "math.randomseed(20261125)\n"
GET = (
    SEED
    + """
request = function()
  return wrk.format("GET", "/items/" .. math.random(1, %(items)d))
end
"""
)
LIST = (
    SEED
    + """
paths = {%(paths)s}
request = function()
  return wrk.format("GET", paths[math.random(1, #paths)])
end
"""
)
ADJUST = (
    SEED
    + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = (n %% 2 == 1) and '{"delta":1}' or '{"delta":-1}'
  return wrk.format(nil, "/items/" .. %(target)s .. "/adjustments", nil, body)
end
"""
)
PING = """
request = function()
  return wrk.format("GET", "/ping")
end
"""


def list_paths(count: int = 1000) -> str:
    chooser = random.Random(7)
    paths = []
    for _ in range(count):
        start = chooser.randint(1, ITEMS - 50)
        cursor = base64.urlsafe_b64encode(
            json.dumps(["id", start, start]).replace(" ", "").encode()
        )
        paths.append(f'"/items?limit=50&cursor={cursor.decode().rstrip("=")}"')
    return ",".join(paths)


SCENARIOS = [
    Scenario("get-c64", 64, GET % {"items": ITEMS}, "GET /items/{random id}"),
    Scenario("get-c256", 256, GET % {"items": ITEMS}, "GET /items/{random id}"),
    Scenario("list-c64", 64, LIST % {"paths": list_paths()}, "GET /items?limit=50&cursor=..."),
    Scenario("adjust-hot-c64", 64, ADJUST % {"target": '"1"'},
             "POST /items/1/adjustments, +1/-1"),
    Scenario("adjust-random-c64", 64, ADJUST % {"target": f"math.random(1, {ITEMS})"},
             "POST /items/{random id}/adjustments, +1/-1"),
    Scenario("ping-c64", 64, PING, "GET /ping"),
]  # fmt: skip


def psql(sql: str, database: str = "postgres") -> str:
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + database
    result = subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                            check=True, capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip()


SEED_SQL = f"""
INSERT INTO items (id, sku, name, name_key, description, price_cents, quantity, version,
                   created_at, updated_at)
SELECT n, 'BENCH-' || lpad(n::text, 5, '0'), 'Bench item ' || n, 'bench item ' || n,
       CASE WHEN n % 3 = 0 THEN NULL ELSE 'A bench item, number ' || n END,
       (n * 37) % 100000, 1000 + n % 100, 1,
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + n * interval '1 second'
FROM generate_series(1, {ITEMS}) n;
SELECT setval(pg_get_serial_sequence('items', 'id'), {ITEMS});
INSERT INTO adjustments (item_id, delta, reason, quantity_after, created_at)
SELECT id, quantity, 'initial', quantity, created_at FROM items;
ANALYZE;
"""
LEDGER_SQL = """
SELECT count(*) FILTER (WHERE coalesce(a.total, 0) <> i.quantity), count(*),
       count(*) FILTER (WHERE i.quantity < 0), (SELECT count(*) FROM adjustments)
FROM items i LEFT JOIN (SELECT item_id, sum(delta) AS total FROM adjustments GROUP BY item_id) a
  ON a.item_id = i.id
"""


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    return run_wrk(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                    "--timeout", "10s", "--latency", "-s", str(script), url])  # fmt: skip


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                ["taskset", "-c", "0", *command, "--port", str(self.port)],
                env=env, cwd=BENCH, stdout=subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        self.ps = psutil.Process(self.process.pid)  # taskset execs: this is the server
        for _ in range(300):
            try:
                if httpx.get(self.url + "/ping").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start; see {log}")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_servers(work: Path) -> dict[str, Server]:
    base = ADMIN_DSN.rsplit("/", 1)[0]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    servers = {}
    # Stockroom as shipped: default settings (auth on, log level info with its access log,
    # metrics and request ids), only the database chosen.
    env = {**clean, "STOCKROOM_DATABASE_URL": base.replace("postgresql://", "postgresql+asyncpg://")
           + f"/{DATABASE}"}  # fmt: skip
    servers["stockroom"] = Server("stockroom", [sys.executable, "-m", "stockroom", "serve"],
                                  env, work / "stockroom.log")  # fmt: skip
    env = {**clean, "BENCH_DSN": f"{base}/{DATABASE}"}
    servers["bare"] = Server("bare", [*uvicorn, "bare_app:app"], env, work / "bare.log")
    env = {**clean, "BENCH_DATABASE_URL": base.replace("postgresql://", "postgresql+asyncpg://")
           + f"/{DATABASE}"}  # fmt: skip
    servers["tutorial"] = Server("tutorial", [*uvicorn, "tutorial_app:app"], env,
                                 work / "tutorial.log")  # fmt: skip
    return servers


def lag_buckets(server: Server) -> dict[float, float]:
    """Stockroom's event-loop lag histogram from its /metrics: cumulative count per bound."""
    buckets = {}
    for line in httpx.get(server.url + "/metrics", timeout=METRICS_TIMEOUT).text.splitlines():
        if line.startswith(LAG_METRIC + "{"):
            bound = re.search(r'le="([^"]+)"', line).group(1)  # type: ignore[union-attr]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The bucket bound below which a share ``q`` of the samples taken between two
    snapshots fell (inf if beyond the largest bucket, nan if there were none)."""
    cumulative = [(bound, after[bound] - before.get(bound, 0.0)) for bound in sorted(after)]
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return math.nan
    return next(bound for bound, count in cumulative if count >= q * total)


def server_errors(server: Server) -> int:
    """5xx answers Stockroom counted so far (its own /metrics), any route."""
    pattern = re.compile(r'^stockroom_http_requests_total\{.*status="5\d\d".*\} ([\d.e+]+)$')
    lines = httpx.get(server.url + "/metrics", timeout=METRICS_TIMEOUT).text.splitlines()
    return sum(int(float(m.group(1))) for line in lines if (m := pattern.match(line)))


def huge_load(server: Server, script: Path, headers: dict[str, str]) -> dict[str, float]:
    """GET by id at c=1024: the server must keep answering (no wedge) and send no 5xx (no
    pool timeouts); then a single GET must still answer at once."""
    errors_before = server_errors(server)
    result = wrk(server.url, script, HUGE_CONNECTIONS, SECONDS)
    result["server_5xx"] = server_errors(server) - errors_before
    started = time.monotonic()
    after = httpx.get(server.url + "/items/42", headers=headers, timeout=METRICS_TIMEOUT)
    result["after_status"] = after.status_code
    result["after_ms"] = (time.monotonic() - started) * 1000
    return result


def same_bodies(servers: dict[str, Server], headers: dict[str, str]) -> dict[str, bool]:
    """Whether Stockroom and bare answer the read scenarios with the same status and bytes."""
    cursor = base64.urlsafe_b64encode(b'["id",4200,4200]').decode().rstrip("=")
    checks = {}
    for path in ("/items/42", f"/items?limit=50&cursor={cursor}", "/ping"):
        answers = [
            httpx.get(servers[name].url + path, headers=headers) for name in ("stockroom", "bare")
        ]
        checks[path] = len({(a.status_code, a.content) for a in answers}) == 1
    return checks


def machine_facts() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2]
    return (f"{os.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.platform(terse=True)}, Python {platform.python_version()}, PostgreSQL "
            f"{psql('SHOW server_version')}, {' '.join(wrk_version)}")  # fmt: skip


def main() -> None:
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = BENCH / "results" / stamp
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="stockroom-bench-"))

    print(f"database {DATABASE}: {ITEMS:,} items ...", flush=True)
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    env.update(STOCKROOM_DATABASE_URL=f"{base}/{DATABASE}", STOCKROOM_LOG_LEVEL="warning")
    stockroom = [sys.executable, "-m", "stockroom"]
    subprocess.run([*stockroom, "migrate"], env=env, check=True, capture_output=True)
    psql(SEED_SQL, DATABASE)
    create_key = [*stockroom, "apikey", "create", "--name", "bench", "--scopes", "write"]
    created = subprocess.run(create_key, env=env, check=True, capture_output=True, text=True)
    key = created.stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}

    servers = start_servers(work)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    lag_before: dict[float, float] = {}
    lag_during: dict[float, float] = {}
    huge: dict[str, float] = {}
    try:
        checks = same_bodies(servers, headers)
        print(f"stockroom and bare answer the same bytes: {checks}", flush=True)
        for scenario in SCENARIOS:
            script = work / f"{scenario.name}.lua"
            script.write_text(f'wrk.headers["Authorization"] = "Bearer {key}"\n{scenario.script}')
            runs[scenario.name] = {name: [] for name in SERVERS}
            for name in SERVERS:
                wrk(servers[name].url, script, scenario.connections, WARMUP_SECONDS)
            for round_no in range(ROUNDS):
                for name in SERVERS:
                    server = servers[name]
                    time.sleep(0.5)
                    watch_lag = name == "stockroom" and scenario.name in GET_SCENARIOS
                    if watch_lag:
                        lag_before = lag_buckets(server)
                    cpu_before = server.cpu_seconds()
                    result = wrk(server.url, script, scenario.connections, SECONDS)
                    result["cpu_s"] = server.cpu_seconds() - cpu_before
                    if watch_lag:  # add up the samples of every stockroom GET run
                        for bound, count in lag_buckets(server).items():
                            lag_during[bound] = (lag_during.get(bound, 0.0) + count
                                                 - lag_before.get(bound, 0.0))  # fmt: skip
                    runs[scenario.name][name].append(result)
                    print(f"{scenario.name} round {round_no + 1} {name}: {result['rps']:,.0f} rps, "
                          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                          f"errors {result['errors']:.0f}", flush=True)  # fmt: skip
        huge = huge_load(servers["stockroom"], work / "get-c64.lua", headers)
        print(f"get-c{HUGE_CONNECTIONS} stockroom: {huge['rps']:,.0f} rps, p50 "
              f"{huge['p50_ms']:.1f} ms, p99 {huge['p99_ms']:.1f} ms, errors "
              f"{huge['errors']:.0f}, 5xx {huge['server_5xx']:.0f}; then a GET "
              f"{huge['after_status']:.0f} in {huge['after_ms']:.0f} ms", flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
        for name in SERVERS:
            log = work / f"{name}.log"
            if log.exists():
                tail = [ln for ln in log.read_text().splitlines() if '"level":"error"' in ln
                        or "Traceback" in ln or "ERROR" in ln][-5:]  # fmt: skip
                for line in tail:
                    print(f"  {name} log: {line[:300]}")

    mismatched, item_count, negative, adjustments = (
        int(n) for n in psql(LEDGER_SQL, DATABASE).split("|")
    )
    ledger_ok = mismatched == 0 and negative == 0
    ledger = (f"Ledger invariant after the adjustment runs (sum of deltas == quantity, "
              f"quantity >= 0): {'held' if ledger_ok else 'BROKEN'} for "
              f"{item_count - mismatched:,} of {item_count:,} items ({mismatched} mismatched, "
              f"{negative} negative; {adjustments:,} ledger rows).")  # fmt: skip
    print(ledger, flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for scenario_name, by_server in runs.items():
        summary[scenario_name] = {}
        for name, rounds in by_server.items():
            requests = sum(r["requests"] for r in rounds)
            summary[scenario_name][name] = {
                "rps": sum(r["rps"] for r in rounds) / len(rounds),
                "p50_ms": sum(r["p50_ms"] for r in rounds) / len(rounds),
                "p99_ms": sum(r["p99_ms"] for r in rounds) / len(rounds),
                "errors": sum(r["errors"] for r in rounds),
                "requests": requests,
                "cpu_ms_per_request": 1000 * sum(r["cpu_s"] for r in rounds) / max(requests, 1),
            }
        bare_rps = summary[scenario_name]["bare"]["rps"]
        for row in summary[scenario_name].values():
            row["ratio_to_bare"] = row["rps"] / bare_rps if bare_rps else float("nan")

    table = ["| scenario | server | rps | x bare | p50 ms | p99 ms | errors | CPU ms/req |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for scenario in SCENARIOS:
        for name in SERVERS:
            r = summary[scenario.name][name]
            table.append(f"| {scenario.name} | {name} | {r['rps']:,.0f} "
                         f"| {r['ratio_to_bare']:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r['errors']:.0f} "
                         f"| {r['cpu_ms_per_request']:.2f} |")  # fmt: skip
    stockroom = {name: summary[name]["stockroom"] for name in summary}
    checks_met: list[tuple[str, str, str, bool]] = []
    for scenario_name, target in TARGETS.items():
        ratio = stockroom[scenario_name]["ratio_to_bare"]
        checks_met.append((f"{scenario_name}: rps / bare rps", f"{ratio:.2f}x",
                           f">= {target:.2f}x", ratio >= target))  # fmt: skip
    for scenario_name in GET_SCENARIOS:
        row = stockroom[scenario_name]
        tail = row["p99_ms"] / row["p50_ms"]
        checks_met.append((f"{scenario_name}: p99 / p50", f"{tail:.1f}x ({row['p99_ms']:.1f} / "
                           f"{row['p50_ms']:.1f} ms)", f"<= {MAX_TAIL_RATIO:.0f}x",
                           tail <= MAX_TAIL_RATIO))  # fmt: skip
        checks_met.append((f"{scenario_name}: errors", f"{row['errors']:.0f}", "0",
                           row["errors"] == 0))  # fmt: skip
    huge_ok = (
        huge["rps"] > 0
        and huge["errors"] == 0
        and huge["server_5xx"] == 0
        and huge["after_status"] == 200
    )
    checks_met.append((f"get-c{HUGE_CONNECTIONS}: keeps answering, no 5xx",
                       f"{huge['rps']:,.0f} rps, {huge['errors']:.0f} errors, "
                       f"{huge['server_5xx']:.0f} 5xx, then a GET: {huge['after_status']:.0f} "
                       f"in {huge['after_ms']:.0f} ms", "answers, 0 errors", huge_ok))  # fmt: skip
    lag_p99 = quantile({}, lag_during, 0.99)
    lag_samples = max(lag_during.values(), default=0)
    checks_met.append(("event-loop lag p99 during the GET runs (/metrics)",
                       f"<= {lag_p99 * 1000:g} ms ({lag_samples:.0f} samples)",
                       f"< {MAX_LOOP_LAG_P99 * 1000:g} ms",
                       lag_p99 < MAX_LOOP_LAG_P99))  # fmt: skip
    checks_met.append(("ledger invariant after the adjustments", "held" if ledger_ok else
                       "BROKEN", "held", ledger_ok))  # fmt: skip
    targets = ["| target (Stockroom) | measured | target | met |", "|---|---|---|---|"]
    for what, measured, target_text, met in checks_met:
        targets.append(f"| {what} | {measured} | {target_text} | {'yes' if met else '**no**'} |")
    scenarios = [f"- `{s.name}`: {s.what}, c={s.connections}" for s in SCENARIOS]
    minutes = (time.monotonic() - started) / 60
    text = "\n".join([
        f"# bench {stamp}", "",
        f"{machine_facts()}.",
        f"Each server: one uvicorn process on core 0; wrk -t1 on core 1; {ROUNDS} rounds x "
        f"{SECONDS} s per server and scenario (servers alternating), after {WARMUP_SECONDS} s "
        f"of warm-up. rps, p50 and p99 are the means of the rounds; errors are non-2xx + "
        f"socket errors; CPU ms/req is the server process's user+system time per answer. "
        f"Run took {minutes:.1f} min. Command: `make bench`", "",
        *scenarios, "",
        f"Stockroom and bare bodies byte-identical: {checks}", "",
        *table, "", *targets, "", ledger, "",
    ])  # fmt: skip
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(
        {"stamp": stamp, "machine": machine_facts(), "seconds": SECONDS, "rounds": ROUNDS,
         "same_bodies": checks, "summary": summary, "runs": runs, "huge": huge,
         "loop_lag_buckets": {str(k): v for k, v in lag_during.items()},
         "targets": [{"what": w, "measured": m, "target": t, "met": ok}
                     for w, m, t, ok in checks_met],
         "ledger": {"ok": ledger_ok, "mismatched": mismatched, "items": item_count,
                    "negative": negative, "adjustments": adjustments}}, indent=2))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
