"""make bench: Stockroom against a bare Starlette + asyncpg reference (**bare**), FastAPI's own
ceiling (**fastapi-ceiling**: a FastAPI route on an asyncpg pool, one prebuilt response) and
the SQLModel tutorial pattern, on one PostgreSQL database of 10,000 items, in the same run.

Each server is one uvicorn process pinned to core 0 (`taskset -c 0`); wrk runs on core 1.
Every scenario runs its servers in rounds (A B C D A B C D, BENCH_ROUNDS rounds of
BENCH_SECONDS s each, after a warm-up per server). All get the same URLs, and the same
pseudo-random ids from the same seed. The list is keyset-paged: `?limit=50&cursor=C` where C
is Stockroom's own cursor for a random start id (`["id", n, n]`, base64url), which the others
decode the same way. POST /items sends a new unique sku in every request (a Lua counter and
a prefix per run). GET by id and the random adjustments also run on a fifth server,
**stockroom-pgbouncer**: Stockroom with STOCKROOM_DATABASE_PGBOUNCER=true through a real
PgBouncer in transaction mode (reported, no target).

Checks: every server answers every scenario with the expected status (a request of each
first, then no non-2xx in the runs: the errors column); bare, fastapi-ceiling and Stockroom
answer the reads byte for byte the same; after every write run the rows written since the
run began are counted and compared with the answers (the same rows per answer on every
server: the item, its ledger rows, its events with their bodies and one txid per
transaction), and the ledger invariant is checked with SQL. On Stockroom: the event-loop lag
p99 during its GET runs (its own /metrics) and GET by id at c=1024 (every server, one round;
5xx counted by wrk, and by Stockroom's /metrics). Every target of issue #13 is printed next
to its figure, met or not.

`--smoke` (or BENCH_SMOKE=1): every phase about 2 s, 1,000 items, one round, pools of 4: a
check that everything answers and writes what it should, not a measurement.

Writes results.md, results.json and chart.svg (bench/charts.py; also docs/charts/bench.svg
unless a smoke or partial run) under bench/results/<UTC timestamp>/ and prints the table.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import platform
import pwd
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from wrkrun import free_port, run_wrk, write_chart

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench"
SMOKE = "--smoke" in sys.argv[1:] or os.environ.get("BENCH_SMOKE") == "1"
ITEMS = int(os.environ.get("BENCH_ITEMS", "1000" if SMOKE else "10000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "2" if SMOKE else "7"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if SMOKE else "2"))
WARMUP_SECONDS = 1 if SMOKE else 2
# Connections per server (Stockroom's default pool is 20 + 0). All five servers are up at
# once: 4 x 20 + PgBouncer's 10 stay under PostgreSQL's 100.
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "4" if SMOKE else "20"))
PGBOUNCER_POOL = max(POOL_SIZE // 2, 2)
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
PGBOUNCER_USER = "postgres"  # PgBouncer refuses to run as root

STOCKROOM, BARE, CEILING, TUTORIAL = "stockroom", "bare", "fastapi-ceiling", "tutorial"
VIA_PGBOUNCER = "stockroom-pgbouncer"
SERVERS = (STOCKROOM, BARE, CEILING, TUTORIAL)
STOCKROOMS = (STOCKROOM, VIA_PGBOUNCER)
SAME_BYTES = (STOCKROOM, BARE, CEILING, VIA_PGBOUNCER)  # the tutorial answers its table model
# Issue #13's targets for Stockroom: rps as a ratio to bare (and to the ceiling).
TARGETS: dict[str, dict[str, float]] = {
    "get-c64": {BARE: 0.60, CEILING: 0.80},
    "get-c256": {BARE: 0.60, CEILING: 0.80},
    "list-c64": {BARE: 0.55},
    "adjust-hot-c64": {BARE: 0.50},
    "adjust-random-c64": {BARE: 0.50},
    "create-c64": {BARE: 0.45},
}
GET_SCENARIOS = ("get-c64", "get-c256")
TAIL_SCENARIO = "get-c64"
ZERO_ERRORS = ("get-c64", "get-c256")
HUGE = "get-c1024"
MAX_TAIL_RATIO = 3.0  # p99 <= 3x p50
MAX_LOOP_LAG_P99 = 0.010  # seconds
LAG_METRIC = "stockroom_event_loop_lag_seconds_bucket"
METRICS_TIMEOUT = 60  # a server just out of a c=1024 run may take a while to answer
QUIET_SECONDS = 0.5  # before each run
# After a run, until the server is idle again (the requests in flight when wrk stopped are
# done): at most this long, idle meaning below this share of a core over 0.2 s.
SETTLE_SECONDS, IDLE_SHARE = 20.0, 0.05


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    script: str  # Lua body; `request` builds each request
    what: str
    servers: tuple[str, ...] = SERVERS
    writes: str | None = None  # "adjust" or "create": the rows are checked after each run
    rounds: int | None = None  # None: ROUNDS
    seconds: int | None = None  # None: SECONDS
    warmup: bool = True
    count_5xx: bool = False  # wrk counts the 5xx answers (a Lua response callback)
    expect: int = 200


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
# A new sku in every request: the run's prefix (wrk ... -- PREFIX) and a counter (wrk -t1).
CREATE = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local prefix = "P"
local n = 0
init = function(args)
  prefix = args[1] or prefix
end
request = function()
  n = n + 1
  local body = '{"sku":"' .. prefix .. '-' .. n .. '","name":"Posted item ' .. n ..
    '","description":"Made by the bench","price":"12.50","quantity":5}'
  return wrk.format(nil, "/items", nil, body)
end
"""
PING = """
request = function()
  return wrk.format("GET", "/ping")
end
"""
# Appended to the c=256 and c=1024 scripts: wrk counts the 5xx answers and prints them.
COUNT_5XX = """
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
server_errors = 0
sent = 0
local scenario_request = request
request = function()
  sent = sent + 1
  return scenario_request()
end
response = function(status, headers, body)
  if status >= 500 then
    server_errors = server_errors + 1
  end
end
done = function(summary, latency, requests)
  local total, sent_total = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("server_errors")
    sent_total = sent_total + thread:get("sent")
  end
  io.write("5xx responses: " .. total .. "\\n")
  io.write("requests sent: " .. sent_total .. "\\n")
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


WITH_PGBOUNCER = (*SERVERS, VIA_PGBOUNCER)
SCENARIOS = [
    Scenario("get-c64", 64, GET % {"items": ITEMS}, "GET /items/{random id}",
             servers=WITH_PGBOUNCER),
    Scenario("get-c256", 256, GET % {"items": ITEMS}, "GET /items/{random id}", count_5xx=True),
    Scenario("list-c64", 64, LIST % {"paths": list_paths()}, "GET /items?limit=50&cursor=..."),
    Scenario("adjust-hot-c64", 64, ADJUST % {"target": '"1"'},
             "POST /items/1/adjustments, +1/-1", writes="adjust", expect=201),
    Scenario("adjust-random-c64", 64, ADJUST % {"target": f"math.random(1, {ITEMS})"},
             "POST /items/{random id}/adjustments, +1/-1", servers=WITH_PGBOUNCER,
             writes="adjust", expect=201),
    Scenario("create-c64", 64, CREATE, "POST /items, a new sku each, quantity 5",
             writes="create", expect=201),
    Scenario("ping-c64", 64, PING, "GET /ping"),
    Scenario(HUGE, 1024, GET % {"items": ITEMS}, "GET /items/{random id}", rounds=1,
             seconds=max(SECONDS, 5), warmup=False, count_5xx=True),
]  # fmt: skip
# BENCH_SCENARIOS=create-c64,list-c64: only these (a partial run, to try a change; the
# targets of the scenarios left out are not checked, and its report says it is partial).
ONLY = [name for name in os.environ.get("BENCH_SCENARIOS", "").split(",") if name]
if unknown := set(ONLY) - {s.name for s in SCENARIOS}:
    raise SystemExit(f"BENCH_SCENARIOS: no scenario {', '.join(sorted(unknown))}")
if ONLY:
    SCENARIOS = [s for s in SCENARIOS if s.name in ONLY]


def psql(sql: str, database: str = "postgres", port: int | None = None) -> str:
    server = ADMIN_DSN.rsplit("/", 1)[0]
    if port is not None:  # the same host and user, another port (PgBouncer's)
        server = re.sub(r"(@[^:/]*)(:\d+)?$", rf"\g<1>:{port}", server)
    dsn = server + "/" + database
    for _ in range(36):  # a shared PostgreSQL out of connections: wait for them (3 min)
        result = subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                                capture_output=True, text=True)  # fmt: skip
        if "too many clients" not in result.stderr:
            break
        time.sleep(5)
    if result.returncode != 0:
        raise PsqlError(result.returncode, ["psql", dsn], result.stdout, result.stderr.strip())
    return result.stdout.strip()


class PsqlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"psql failed: {self.stderr}"


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
# Sessions of the bench's database (but this one) in a statement or a transaction.
BUSY_SQL = f"""
SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid()
  AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')
"""
# Where the tables stand: new rows of a run are those above the marks taken before it.
MARKS_SQL = """
SELECT (SELECT coalesce(max(id), 0) FROM items), (SELECT coalesce(max(id), 0) FROM adjustments),
       (SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(sum(version), 0) FROM items)
"""
ITEM_KEYS = (
    "ARRAY['created_at','description','id','name','price','quantity','reorder_point','sku',"
    "'updated_at','version']"
)
ADJUSTMENT_KEYS = "ARRAY['created_at','delta','id','item_id','quantity_after','reason']"
# The rows a run wrote, and whether they are the rows Stockroom writes: event bodies
# {"id", "type", "created_at", "data"} matching their columns, item.created data matching the
# item row, stock.adjusted data matching the ledger row, the events of one transaction (one
# txid) and what they refer to, and each touched item's row as its last ledger row left it.
ROWS_SQL = f"""
WITH it AS (SELECT * FROM items WHERE id > %(i0)d AND id <= %(i1)d),
adj AS (SELECT * FROM adjustments WHERE id > %(a0)d AND id <= %(a1)d),
ev AS (SELECT seq, txid, id, type, created_at, body::jsonb AS b FROM events
       WHERE seq > %(e0)d AND seq <= %(e1)d),
last AS (SELECT DISTINCT ON (item_id) item_id, quantity_after, created_at FROM adj
         ORDER BY item_id, id DESC),
tx AS (SELECT count(*) FILTER (WHERE type = 'item.created') || ':'
              || count(*) FILTER (WHERE type = 'stock.adjusted') || ':'
              || count(DISTINCT coalesce(b->'data'->>'item_id', b->'data'->>'id')) AS shape
       FROM ev GROUP BY txid)
SELECT json_build_object(
  'items', (SELECT count(*) FROM it),
  'adjustments', (SELECT count(*) FROM adj),
  'initial', (SELECT count(*) FROM adj WHERE reason = 'initial'),
  'events', (SELECT count(*) FROM ev),
  'item_created', (SELECT count(*) FROM ev WHERE type = 'item.created'),
  'stock_adjusted', (SELECT count(*) FROM ev WHERE type = 'stock.adjusted'),
  'transactions', (SELECT count(DISTINCT txid) FROM ev),
  'tx_shapes', (SELECT json_object_agg(shape, n) FROM
                (SELECT shape, count(*) AS n FROM tx GROUP BY shape) s),
  'bodies_ok', (SELECT count(*) FROM ev
                WHERE ARRAY(SELECT jsonb_object_keys(b) ORDER BY 1)
                      = ARRAY['created_at','data','id','type']
                  AND b->>'id' = id AND b->>'type' = type
                  AND (b->>'created_at')::timestamptz = created_at),
  'created_match', (SELECT count(*) FROM ev JOIN it ON it.id = (ev.b->'data'->>'id')::int
                    WHERE ev.type = 'item.created'
                      AND ARRAY(SELECT jsonb_object_keys(ev.b->'data') ORDER BY 1) = {ITEM_KEYS}
                      AND ev.b->'data'->>'sku' = it.sku AND ev.b->'data'->>'name' = it.name
                      AND (ev.b->'data'->>'quantity')::int = it.quantity
                      AND (ev.b->'data'->>'version')::int = 1
                      AND ev.b->'data'->>'price'
                          = to_char(it.price_cents / 100.0, 'FM9999999990.00')
                      AND (ev.b->'data'->>'created_at')::timestamptz = it.created_at
                      AND ev.created_at = it.updated_at),
  'adjusted_match', (SELECT count(*) FROM ev JOIN adj ON adj.id = (ev.b->'data'->>'id')::int
                     WHERE ev.type = 'stock.adjusted'
                       AND ARRAY(SELECT jsonb_object_keys(ev.b->'data') ORDER BY 1)
                           = {ADJUSTMENT_KEYS}
                       AND (ev.b->'data'->>'item_id')::int = adj.item_id
                       AND (ev.b->'data'->>'delta')::int = adj.delta
                       AND ev.b->'data'->>'reason' IS NOT DISTINCT FROM adj.reason
                       AND (ev.b->'data'->>'quantity_after')::int = adj.quantity_after
                       AND (ev.b->'data'->>'created_at')::timestamptz = adj.created_at
                       AND ev.created_at = adj.created_at),
  'touched', (SELECT count(*) FROM last),
  'touched_ok', (SELECT count(*) FROM last l JOIN items i ON i.id = l.item_id
                 WHERE i.updated_at = l.created_at AND i.quantity = l.quantity_after)
)
"""


def wrk(url: str, script: Path, connections: int, seconds: int,
        args: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    extra = ["--", *args] if args else []
    return run_wrk(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                    "--timeout", "10s", "--latency", "-s", str(script), url, *extra])  # fmt: skip


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
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/ping").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start; see {log}")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def settle(self) -> float:
        """Wait until the server is idle and no statement or transaction of any client runs
        in the bench's database (requests waiting on a row lock cost the server no CPU), or
        SETTLE_SECONDS passed; how long it took."""
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_SECONDS:
            before = self.cpu_seconds()
            time.sleep(0.2)
            if self.cpu_seconds() - before < IDLE_SHARE * 0.2 and psql(BUSY_SQL, DATABASE) == "0":
                break
        return time.monotonic() - started

    def pause(self, paused: bool) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the server and any child of it: an idle server
        takes no CPU from the one being measured (Stockroom's webhook dispatcher wakes on
        every commit that wrote events, whichever server made it)."""
        try:
            for process in [self.ps, *self.ps.children(recursive=True)]:
                process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass  # it has exited (a server that did not start)

    def stop(self) -> None:
        self.pause(False)
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PgBouncer:
    """A real PgBouncer in transaction mode in front of the bench's PostgreSQL (as
    tests/support/pgbouncer.py starts it for the tests), with PGBOUNCER_POOL server connections."""

    def __init__(self) -> None:
        if not os.access(PGBOUNCER, os.X_OK):
            raise RuntimeError("pgbouncer is not installed (make bench installs it)")
        upstream = ADMIN_DSN.rsplit("/", 1)[0].removeprefix("postgresql://")
        user, _, host_port = upstream.rpartition("@")
        host, _, port = host_port.partition(":")
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="stockroom-bench-pgbouncer-"))
        self.folder.chmod(0o755)  # readable by the user PgBouncer runs as
        self.log = self.folder / "pgbouncer.log"
        users = self.folder / "users.txt"
        users.write_text(f'"{user or "postgres"}" ""\n')
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={host or '127.0.0.1'} port={port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {PGBOUNCER_POOL}\nmax_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.log}\n"
        )
        for path in (users, config):
            path.chmod(0o644)
        command = [PGBOUNCER, str(config)]
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PGBOUNCER_USER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            command[1:1] = ["-u", PGBOUNCER_USER]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited; see {self.log}")
            try:
                psql("SELECT 1", DATABASE, port=self.port)
                return
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("pgbouncer did not start")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_servers(work: Path, pgbouncer: PgBouncer, servers: dict[str, Server]) -> None:
    """Start the five servers into ``servers`` (each as soon as it runs: the caller stops
    those that started, should a later one fail)."""
    base = ADMIN_DSN.rsplit("/", 1)[0]
    asyncpg_base = base.replace("postgresql://", "postgresql+asyncpg://")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    clean["BENCH_POOL_SIZE"] = str(POOL_SIZE)
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    stockroom = [sys.executable, "-m", "stockroom", "serve"]
    # Stockroom as shipped: default settings (auth on, log level info with its access log,
    # metrics and request ids, the webhook dispatcher), only the database (and in --smoke
    # the pool) chosen.
    env = {**clean, "STOCKROOM_DATABASE_URL": f"{asyncpg_base}/{DATABASE}"}
    if SMOKE:
        env["STOCKROOM_DATABASE_POOL_SIZE"] = str(POOL_SIZE)
    servers[STOCKROOM] = Server(STOCKROOM, stockroom, env, work / f"{STOCKROOM}.log")
    host = base.rsplit("@", 1)[0] + "@127.0.0.1:" + str(pgbouncer.port)
    env = {**env, "STOCKROOM_DATABASE_PGBOUNCER": "true",
           "STOCKROOM_DATABASE_URL": host.replace("postgresql://", "postgresql+asyncpg://")
           + f"/{DATABASE}"}  # fmt: skip
    servers[VIA_PGBOUNCER] = Server(VIA_PGBOUNCER, stockroom, env, work / f"{VIA_PGBOUNCER}.log")
    env = {**clean, "BENCH_DSN": f"{base}/{DATABASE}"}
    servers[BARE] = Server(BARE, [*uvicorn, "bare_app:app"], env, work / f"{BARE}.log")
    servers[CEILING] = Server(CEILING, [*uvicorn, "ceiling_app:app"], env,
                              work / f"{CEILING}.log")  # fmt: skip
    env = {**clean, "BENCH_DATABASE_URL": f"{asyncpg_base}/{DATABASE}"}
    servers[TUTORIAL] = Server(TUTORIAL, [*uvicorn, "tutorial_app:app"], env,
                               work / f"{TUTORIAL}.log")  # fmt: skip


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


def after_huge(server: Server, headers: dict[str, str]) -> tuple[int, float]:
    """A single GET right after the c=1024 run: its status and how long it took (ms)."""
    started = time.monotonic()
    after = httpx.get(server.url + "/items/42", headers=headers, timeout=METRICS_TIMEOUT)
    return after.status_code, (time.monotonic() - started) * 1000


def same_bodies(servers: dict[str, Server], headers: dict[str, str]) -> dict[str, bool]:
    """Whether Stockroom (both), bare and the ceiling answer the read scenarios with the same
    status and bytes."""
    cursor = base64.urlsafe_b64encode(b'["id",4200,4200]' if ITEMS > 4300 else b'["id",420,420]')
    checks = {}
    for path in ("/items/42", f"/items?limit=50&cursor={cursor.decode().rstrip('=')}", "/ping"):
        answers = [httpx.get(servers[name].url + path, headers=headers) for name in SAME_BYTES]
        checks[path] = len({(a.status_code, a.content) for a in answers}) == 1
    return checks


def answers_check(servers: dict[str, Server], headers: dict[str, str]) -> dict[str, str]:
    """One request of each scenario to every server: the expected status, and for the writes
    the same members (and Location and ETag headers) as Stockroom's answer. "ok" or what is
    wrong, per server."""
    cursor = base64.urlsafe_b64encode(b'["id",100,100]').decode().rstrip("=")
    requests: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("GET", "/items/42", None, 200),
        ("GET", f"/items?limit=50&cursor={cursor}", None, 200),
        ("POST", "/items/7/adjustments", {"delta": 1}, 201),
        ("POST", "/items/7/adjustments", {"delta": -1}, 201),
        (
            "POST",
            "/items",
            {"sku": "CHECK-{name}", "name": "Checked", "price": "1.50", "quantity": 3},
            201,
        ),
        ("GET", "/ping", None, 200),
    ]
    shapes: dict[str, tuple[Any, ...]] = {}
    verdicts = {}
    for name in (STOCKROOM, *[n for n in servers if n != STOCKROOM]):
        wrong = []
        for method, path, body, status in requests:
            if body is not None and "sku" in body:
                body = {**body, "sku": body["sku"].format(name=name)}
            answer = httpx.request(method, servers[name].url + path, json=body, headers=headers)
            if answer.status_code != status:
                wrong.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
                continue
            shape = (sorted(answer.json()), "location" in answer.headers, "etag" in answer.headers)
            key = f"{method} {path}"
            if name == STOCKROOM:
                shapes[key] = shape
            elif method == "POST" and name != TUTORIAL and shapes.get(key) != shape:
                wrong.append(f"{key}: answer {shape}, Stockroom's {shapes.get(key)}")
        verdicts[name] = "; ".join(wrong) or "ok"
    return verdicts


def marks() -> dict[str, int]:
    i, a, e, v = (int(n) for n in psql(MARKS_SQL, DATABASE).split("|"))
    return {"i": i, "a": a, "e": e, "v": v}


def rows_written(kind: str, before: dict[str, int], after: dict[str, int],
                 result: dict[str, float], connections: int) -> dict[str, Any]:  # fmt: skip
    """The rows a write run left, and whether they are what Stockroom writes per answer."""
    bounds = {"i0": before["i"], "i1": after["i"], "a0": before["a"], "a1": after["a"],
              "e0": before["e"], "e1": after["e"]}  # fmt: skip
    rows: dict[str, Any] = json.loads(psql(ROWS_SQL % bounds, DATABASE))
    rows["version_bumps"] = after["v"] - before["v"] - rows["items"]
    n = rows["transactions"]
    answered = int(result["requests"] - result["non_2xx"])
    rows["answered"] = answered
    per_answer = {
        "adjust": {"items": 0, "adjustments": n, "initial": 0, "events": n, "item_created": 0,
                   "stock_adjusted": n, "bodies_ok": n, "created_match": 0,
                   "adjusted_match": n, "version_bumps": n},
        "create": {"items": n, "adjustments": n, "initial": n, "events": 2 * n,
                   "item_created": n, "stock_adjusted": n, "bodies_ok": 2 * n,
                   "created_match": n, "adjusted_match": n, "version_bumps": 0},
    }[kind]  # fmt: skip
    wrong = [f"{key} {rows[key]} (expected {value})" for key, value in per_answer.items()
             if rows[key] != value]  # fmt: skip
    shape = {"adjust": "0:1:1", "create": "1:1:1"}[kind]
    if (rows["tx_shapes"] or {}) != ({shape: n} if n else {}):
        wrong.append(f"events per transaction {rows['tx_shapes']} (expected {{{shape!r}: {n}}})")
    if rows["touched_ok"] != rows["touched"]:
        wrong.append(f"items as their last ledger row left them: {rows['touched_ok']} of "
                     f"{rows['touched']}")  # fmt: skip
    # Requests in flight when wrk stopped (or that it gave up on) may have committed too.
    if not answered <= n <= answered + result["socket_errors"] + connections:
        wrong.append(f"{n} transactions for {answered} answers")
    rows["ok"] = not wrong
    rows["wrong"] = wrong
    return rows


def ledger() -> dict[str, Any]:
    mismatched, item_count, negative, adjustments = (
        int(n) for n in psql(LEDGER_SQL, DATABASE).split("|")
    )
    return {"ok": mismatched == 0 and negative == 0, "mismatched": mismatched,
            "items": item_count, "negative": negative, "adjustments": adjustments}  # fmt: skip


def machine_facts() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2]
    pgbouncer = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True)
    return (f"{os.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.platform(terse=True)}, Python {platform.python_version()}, PostgreSQL "
            f"{psql('SHOW server_version')}, {' '.join(wrk_version)}, "
            f"{pgbouncer.stdout.splitlines()[0] if pgbouncer.stdout else 'PgBouncer'}")  # fmt: skip


def fmt_ratio(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}x"


def fmt_tail(row: dict[str, Any]) -> str:
    return "n/a" if math.isnan(row["tail"]) else f"{row['tail']:.1f}x"


def main() -> None:
    started = time.monotonic()
    phases: dict[str, float] = {}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = BENCH / "results" / stamp
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="stockroom-bench-"))

    print(f"database {DATABASE}: {ITEMS:,} items{' (smoke run)' if SMOKE else ''} ...",
          flush=True)  # fmt: skip
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

    pgbouncer = PgBouncer()
    servers: dict[str, Server] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    warmups: dict[str, dict[str, dict[str, Any]]] = {}
    lag_before: dict[float, float] = {}
    lag_during: dict[float, float] = {}
    huge_after: dict[str, tuple[int, float]] = {}
    ledgers: list[dict[str, Any]] = []
    try:
        start_servers(work, pgbouncer, servers)
        phases["setup"] = time.monotonic() - started
        checks = same_bodies(servers, headers)
        print(f"{', '.join(SAME_BYTES)} answer the same bytes: {checks}", flush=True)
        verdicts = answers_check(servers, headers)
        print(f"one request of each scenario, status and members: {verdicts}", flush=True)
        if not all(checks.values()) or any(v != "ok" for v in verdicts.values()):
            raise SystemExit("a server does not answer the scenarios as expected (above)")

        def freeze_all_but(name: str) -> int:
            """Freeze every server but ``name``, none of them inside a transaction (a frozen
            dispatcher step would hold its locks and connection): after freezing, no session
            of the database may be busy, else thaw, wait and try again. The attempts made."""
            for attempt in range(1, 21):
                for other, frozen in servers.items():
                    frozen.pause(other != name)
                time.sleep(0.05)
                if psql(BUSY_SQL, DATABASE) == "0":
                    return attempt
                for frozen in servers.values():
                    frozen.pause(False)
                time.sleep(0.1)
            print(f"  could not freeze the others outside a transaction for {name}", flush=True)
            return 0

        def measure(scenario: Scenario, name: str, script: Path, seconds: int,
                    tag: str) -> dict[str, Any]:  # fmt: skip
            nonlocal lag_before
            server = servers[name]
            # Only the measured server runs. Thawed before the pause below: its event-loop
            # probe records the time it was frozen at once, before lag_before is read.
            result_freeze = freeze_all_but(name)
            time.sleep(QUIET_SECONDS)
            # Thawed, Stockroom's dispatcher catches up with the events the others wrote
            # meanwhile (one fan-out, no webhooks): done before its run, not in it.
            server.settle()
            before = marks() if scenario.writes else {}
            watch_lag = name == STOCKROOM and scenario.name in GET_SCENARIOS and tag != "warmup"
            if watch_lag:
                lag_before = lag_buckets(server)
            errors_before = server_errors(server) if name in STOCKROOMS else 0
            cpu_before = server.cpu_seconds()
            pgbouncer_before = pgbouncer.cpu_seconds()
            idle_before = {other: servers[other].cpu_seconds() for other in servers}
            result: dict[str, Any] = wrk(server.url, script, scenario.connections, seconds,
                                         (f"{name}-{scenario.name}-{tag}",))  # fmt: skip
            result["cpu_s"] = server.cpu_seconds() - cpu_before
            # What the other servers (frozen, so none: a check of the freezing) used meanwhile.
            result["idle_servers_cpu_s"] = {
                other: servers[other].cpu_seconds() - idle_before[other]
                for other in servers
                if other != name
            }
            if name == VIA_PGBOUNCER:
                result["pgbouncer_cpu_s"] = pgbouncer.cpu_seconds() - pgbouncer_before
            if "sent" in result:  # sent, neither answered nor failed: waiting at the end
                result["in_flight"] = result["sent"] - result["requests"] - result["socket_errors"]
            if watch_lag:  # add up the samples of every stockroom GET run
                for bound, count in lag_buckets(server).items():
                    lag_during[bound] = (lag_during.get(bound, 0.0) + count
                                         - lag_before.get(bound, 0.0))  # fmt: skip
            # The requests in flight when wrk stopped finish before anything else runs.
            result["settle_s"] = server.settle()
            result["freeze_attempts"] = result_freeze
            if name in STOCKROOMS:  # after the settling: answers sent after wrk stopped too
                result["server_5xx"] = server_errors(server) - errors_before
            if scenario.writes:
                for _ in range(5):  # counted again if a late answer committed meanwhile
                    after = marks()
                    result["rows"] = rows_written(scenario.writes, before, after, result,
                                                  scenario.connections)  # fmt: skip
                    if marks() == after:
                        break
                    server.settle()
                result["ledger"] = ledger()
                ledgers.append(result["ledger"])
            return result

        for scenario in SCENARIOS:
            phase_started = time.monotonic()
            script = work / f"{scenario.name}.lua"
            counter = COUNT_5XX if scenario.count_5xx else ""
            script.write_text(f'wrk.headers["Authorization"] = "Bearer {key}"\n'
                              f"{scenario.script}{counter}")  # fmt: skip
            runs[scenario.name] = {name: [] for name in scenario.servers}
            warmups[scenario.name] = {}
            if scenario.warmup:
                for name in scenario.servers:
                    warm = measure(scenario, name, script, WARMUP_SECONDS, "warmup")
                    warmups[scenario.name][name] = warm
                    if not warm.get("rows", {"ok": True})["ok"]:
                        print(f"{scenario.name} warm-up {name}: rows {warm['rows']['wrong']}")
            for round_no in range(scenario.rounds or ROUNDS):
                for name in scenario.servers:
                    result = measure(scenario, name, script, scenario.seconds or SECONDS,
                                     f"r{round_no + 1}")  # fmt: skip
                    if scenario.name == HUGE:
                        huge_after[name] = after_huge(servers[name], headers)
                        result["after_status"], result["after_ms"] = huge_after[name]
                    runs[scenario.name][name].append(result)
                    rows = result.get("rows")
                    print(f"{scenario.name} round {round_no + 1} {name}: {result['rps']:,.0f} rps, "
                          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                          f"errors {result['errors']:.0f}"
                          + (f", 5xx {result['wrk_5xx']}" if "wrk_5xx" in result else "")
                          + (f"; rows {'ok' if rows['ok'] else rows['wrong']} "
                             f"({rows['transactions']} transactions)" if rows else "")
                          + (f"; ledger {'held' if result['ledger']['ok'] else 'BROKEN'}"
                             if rows else ""), flush=True)  # fmt: skip
            phases[scenario.name] = time.monotonic() - phase_started
    finally:
        for server in servers.values():
            server.pause(False)
        for server in servers.values():
            server.stop()
        pgbouncer.stop()
        for name in WITH_PGBOUNCER:
            log = work / f"{name}.log"
            if log.exists():
                tail = [ln for ln in log.read_text().splitlines() if '"level":"error"' in ln
                        or "Traceback" in ln or "ERROR" in ln][-5:]  # fmt: skip
                for line in tail:
                    print(f"  {name} log: {line[:300]}")

    final = ledger()
    ledgers.append(final)
    ledger_ok = all(entry["ok"] for entry in ledgers)
    ledger_text = (f"Ledger invariant (sum of deltas == quantity, quantity >= 0), checked after "
                   f"each of the {len(ledgers) - 1} write runs and at the end: "
                   f"{'held every time' if ledger_ok else 'BROKEN'}; at the end "
                   f"{final['items'] - final['mismatched']:,} of {final['items']:,} items "
                   f"({final['mismatched']} mismatched, {final['negative']} negative; "
                   f"{final['adjustments']:,} ledger rows).")  # fmt: skip
    print(ledger_text, flush=True)

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in SCENARIOS:
        summary[scenario.name] = {}
        for name, rounds in runs[scenario.name].items():
            requests = sum(r["requests"] for r in rounds)
            row: dict[str, Any] = {
                "rps": sum(r["rps"] for r in rounds) / len(rounds),
                "p50_ms": sum(r["p50_ms"] for r in rounds) / len(rounds),
                "p99_ms": sum(r["p99_ms"] for r in rounds) / len(rounds),
                "errors": sum(r["errors"] for r in rounds),
                "socket_errors": sum(r["socket_errors"] for r in rounds),
                "requests": requests,
                "cpu_ms_per_request": 1000 * sum(r["cpu_s"] for r in rounds) / max(requests, 1),
            }
            row["tail"] = row["p99_ms"] / row["p50_ms"] if row["p50_ms"] else math.nan
            if scenario.count_5xx:
                row["5xx"] = sum(r["wrk_5xx"] for r in rounds)
                row["in_flight"] = sum(r["in_flight"] for r in rounds)
            if name in STOCKROOMS:
                row["server_5xx"] = sum(r["server_5xx"] for r in rounds)
            if name == VIA_PGBOUNCER:
                cpu = sum(r["pgbouncer_cpu_s"] for r in rounds)
                row["pgbouncer_cpu_ms_per_request"] = 1000 * cpu / max(requests, 1)
            if scenario.writes:
                written = [r["rows"] for r in rounds]
                row["rows_ok"] = all(w["ok"] for w in written)
                for what in ("answered", "transactions", "items", "adjustments", "events"):
                    row[what] = sum(w[what] for w in written)
            summary[scenario.name][name] = row
        by_server = summary[scenario.name]
        for row in by_server.values():
            for ref, field in ((BARE, "ratio_to_bare"), (CEILING, "ratio_to_ceiling")):
                ref_rps = by_server[ref]["rps"] if ref in by_server else 0
                row[field] = row["rps"] / ref_rps if ref_rps else math.nan

    # Issue #13's targets, each computed from this run.
    checks_met: list[tuple[str, str, str, bool]] = []
    beside: dict[str, list[str]] = {}  # scenario -> "target met" next to Stockroom's row

    def target(scenario_name: str, what: str, measured: str, wanted: str, met: bool) -> None:
        checks_met.append((f"{scenario_name}: {what}", measured, wanted, met))
        beside.setdefault(scenario_name, []).append(f"{wanted} {'yes' if met else '**no**'}")

    for scenario_name, refs in TARGETS.items():
        if scenario_name not in summary:
            continue
        row = summary[scenario_name][STOCKROOM]
        for ref, wanted in refs.items():
            ratio = row["ratio_to_bare" if ref == BARE else "ratio_to_ceiling"]
            target(scenario_name, f"rps / {ref} rps", f"{ratio:.2f}x", f">= {wanted:.2f}x {ref}",
                   ratio >= wanted)  # fmt: skip
    tail_row = summary.get(TAIL_SCENARIO, {}).get(STOCKROOM)
    if tail_row is not None:
        target(TAIL_SCENARIO, "p99 / p50", f"{tail_row['tail']:.1f}x ({tail_row['p99_ms']:.1f} "
               f"/ {tail_row['p50_ms']:.1f} ms)", f"p99 <= {MAX_TAIL_RATIO:.0f}x p50",
               tail_row["tail"] <= MAX_TAIL_RATIO)  # fmt: skip
    for scenario_name in ZERO_ERRORS:
        if scenario_name not in summary:
            continue
        errors = summary[scenario_name][STOCKROOM]["errors"]
        target(scenario_name, "errors", f"{errors:.0f}", "0 errors", errors == 0)
    if HUGE in summary:
        huge = summary[HUGE][STOCKROOM]
        after_status, after_ms = huge_after[STOCKROOM]
        huge_ok = (huge["rps"] > 0 and huge["errors"] == 0 and huge["5xx"] == 0
                   and huge["server_5xx"] == 0 and after_status == 200)  # fmt: skip
        target(HUGE, "every request answered, no 5xx",
               f"{huge['rps']:,.0f} rps, {huge['errors']:.0f} errors "
               f"({huge['socket_errors']:.0f} socket errors or timeouts), {huge['5xx']:.0f} "
               f"5xx (Stockroom's /metrics: {huge['server_5xx']:.0f}), "
               f"{huge['in_flight']:.0f} still waiting when the run ended, then a GET: "
               f"{after_status} in {after_ms:.0f} ms", "all answered, no 5xx",
               huge_ok)  # fmt: skip
    lag_p99 = quantile({}, lag_during, 0.99)
    lag_samples = max(lag_during.values(), default=0)
    checks_met.append(("event-loop lag p99 during the GET runs (/metrics)",
                       f"<= {lag_p99 * 1000:g} ms ({lag_samples:.0f} samples)",
                       f"< {MAX_LOOP_LAG_P99 * 1000:g} ms",
                       lag_p99 < MAX_LOOP_LAG_P99))  # fmt: skip
    checks_met.append(("ledger invariant after every write run",
                       f"held {sum(e['ok'] for e in ledgers)} of {len(ledgers)}", "held",
                       ledger_ok))  # fmt: skip
    write_runs = [
        run
        for scenario in SCENARIOS
        if scenario.writes
        for run in [
            *warmups[scenario.name].values(),
            *(r for rounds in runs[scenario.name].values() for r in rounds),
        ]
    ]
    rows_ok = all(r["rows"]["ok"] for r in write_runs)
    checks_met.append(("every write run wrote Stockroom's rows per answer (every server)",
                       f"{sum(r['rows']['ok'] for r in write_runs)} of {len(write_runs)} runs",
                       "all", rows_ok))  # fmt: skip
    statuses_ok = all(v == "ok" for v in verdicts.values()) and all(checks.values())
    checks_met.append(("every server: one request of each scenario answered as expected, "
                       "reads byte-identical", "yes" if statuses_ok else
                       f"{verdicts} {checks}", "yes", statuses_ok))  # fmt: skip

    table = ["| scenario | server | rps | x bare | x ceiling | p50 ms | p99 ms | p99/p50 "
             "| errors | 5xx | CPU ms/req | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for scenario in SCENARIOS:
        for name in scenario.servers:
            r = summary[scenario.name][name]
            if "5xx" in r:
                server_5xx = f"{r['5xx']:.0f}"
            elif "server_5xx" in r:
                server_5xx = f"{r['server_5xx']:.0f}*"
            else:
                server_5xx = "-"
            goal = ""
            if name == STOCKROOM:
                goal = "; ".join(beside.get(scenario.name, []))
            elif name == VIA_PGBOUNCER:
                goal = "PgBouncer: no target"
            cpu = f"{r['cpu_ms_per_request']:.2f}"
            if name == VIA_PGBOUNCER:
                cpu += f" (+{r['pgbouncer_cpu_ms_per_request']:.2f} PgBouncer)"
            table.append(f"| {scenario.name} | {name} | {r['rps']:,.0f} "
                         f"| {fmt_ratio(r['ratio_to_bare'])} | {fmt_ratio(r['ratio_to_ceiling'])} "
                         f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {fmt_tail(r)} "
                         f"| {r['errors']:.0f} | {server_5xx} | {cpu} | {goal} |")  # fmt: skip
    targets = ["| target (Stockroom) | measured | target | met |", "|---|---|---|---|"]
    for what, measured, target_text, met in checks_met:
        targets.append(f"| {what} | {measured} | {target_text} | {'yes' if met else '**no**'} |")
    written_table = ["| scenario | server | answered 2xx | transactions | items | adjustments "
                     "| events | rows as Stockroom writes them |",
                     "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for scenario in SCENARIOS:
        if scenario.writes:
            for name in scenario.servers:
                r = summary[scenario.name][name]
                written_table.append(
                    f"| {scenario.name} | {name} | {r['answered']:,} | {r['transactions']:,} "
                    f"| {r['items']:,} | {r['adjustments']:,} | {r['events']:,} "
                    f"| {'yes' if r['rows_ok'] else '**no**'} |"
                )
    scenarios = [f"- `{s.name}`: {s.what}, c={s.connections}" for s in SCENARIOS]
    # The idle servers' CPU during the runs, as a share of a core: the most of any run.
    idle_share: dict[str, tuple[float, str, str]] = {}
    for scenario in SCENARIOS:
        for name, rounds in runs[scenario.name].items():
            for r in rounds:
                seconds = scenario.seconds or SECONDS
                for other, cpu in r["idle_servers_cpu_s"].items():
                    share = cpu / seconds
                    if share > idle_share.get(scenario.name, (0.0, "", ""))[0]:
                        idle_share[scenario.name] = (share, other, name)
    idle_text = "Most CPU a frozen server used during another's run (share of a core): " + (
        ", ".join(f"{scenario} {share:.1%} ({other} during {name})"
                  for scenario, (share, other, name) in idle_share.items()) or "none"
    ) + "."  # fmt: skip
    minutes = (time.monotonic() - started) / 60
    phase_text = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items())
    text = "\n".join([
        f"# bench {stamp}{' (smoke run: the figures mean nothing)' if SMOKE else ''}"
        f"{f' (partial run: {ONLY})' if ONLY else ''}", "",
        f"{machine_facts()}.",
        f"Each server: one uvicorn process on core 0; wrk -t1 on core 1; {ROUNDS} rounds x "
        f"{SECONDS} s per server and scenario (servers alternating), after {WARMUP_SECONDS} s "
        f"of warm-up ({HUGE}: one round, no warm-up). {ITEMS:,} items; pools of {POOL_SIZE} "
        f"connections (PgBouncer: {PGBOUNCER_POOL} server connections). rps, p50 and p99 are "
        f"the means of the rounds; errors are non-2xx + socket errors; 5xx counted by wrk "
        f"(* Stockroom's own /metrics, - not counted); CPU ms/req is the server process's "
        f"user+system time per answer. Run took {minutes:.1f} min ({phase_text}). Command: "
        f"`make bench`", "",
        *scenarios, "",
        f"Stockroom, stockroom-pgbouncer, bare and fastapi-ceiling bodies byte-identical: "
        f"{checks}", f"One request of each scenario per server: {verdicts}", "",
        *table, "", idle_text, "", *targets, "", ledger_text, "",
        "Rows written by the write runs (every round, warm-ups not counted here):", "",
        *written_table, "",
    ])  # fmt: skip
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(
        {"stamp": stamp, "smoke": SMOKE, "machine": machine_facts(), "seconds": SECONDS,
         "rounds": ROUNDS, "items": ITEMS, "pool_size": POOL_SIZE, "phases_s": phases,
         "same_bodies": checks, "answers": verdicts, "summary": summary, "runs": runs,
         "warmups": warmups, "loop_lag_buckets": {str(k): v for k, v in lag_during.items()},
         "targets": [{"what": w, "measured": m, "target": t, "met": ok}
                     for w, m, t, ok in checks_met],
         "ledger": ledgers}, indent=2, default=str))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    print(f"written to {out_dir}")
    write_chart(out_dir, publish=not SMOKE and not ONLY)  # docs/charts/bench.svg: full runs


if __name__ == "__main__":
    main()
