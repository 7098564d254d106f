"""make bench-replicas: issue #23's replica scenario. What routing reads to a replica costs on
GET /items/{id} against replicas off (CPU per request: target within 5%), and how long a
commit on the primary takes to become visible on the replica (p50/p99), with and without
write load.

A script apart from bench/bench.py because it needs a primary and a hot standby of its own:
bench.py runs on the machine's shared cluster (BENCH_POSTGRES_DSN), which has no standby, and
a benchmark must never reconfigure or restart a shared cluster. This one makes both in a
temporary folder (BENCH_REPLICAS_DIR, else the system's temporary folder, on disk like the
shared cluster; PostgreSQL 15's own programs from /usr/lib/postgresql/15/bin, run as the
`postgres` OS user when run as root): `initdb` of the primary (trust on 127.0.0.1, a free
port, `wal_level = replica`, `fsync` and `synchronous_commit` on), `pg_ctl start`,
`pg_basebackup -R -X stream` of the standby (asynchronous streaming, `hot_standby = on`) on
another free port. Both are stopped and the folder removed at the end, whether the run
succeeded or not (SIGINT and SIGTERM too). Self-contained rather than importing
tests/support/pgservers.py, which pulls in pytest and the test suite's database helpers.

Then `stockroom migrate` onto the primary, bench.py's seed (10,000 items in set-based SQL,
`--smoke` 1,000), an API key (`stockroom apikey create`), and two `stockroom serve`
processes, both up, each pinned to core 0 (`taskset -c 0`; wrk on core 1), the one not
measured frozen (SIGSTOP) during each run, pools of bench.py's size:
- **a, replicas off**: STOCKROOM_DATABASE_URL = the primary only;
- **b, replica**: the same plus STOCKROOM_DATABASE_REPLICA_URLS = the standby;
- **c, replica + token**: server b, every request sending a `Consistency-Token` the standby
  has already replayed (the token of a write made through b before the runs): the cost of
  the per-request check (reported, no target).

GET /items/{random id} at c=64 (bench.py's Lua script: the same seed, the same ids), after
a warm-up each, in rounds a b c a b c (BENCH_ROUNDS rounds of BENCH_SECONDS s, bench.py's
defaults). Per run: rps, p50/p99 latency (wrk), and the server process's CPU (user + system,
psutil) per answer. Target: CPU per request of b / a <= 1.05. Checks: no non-2xx answer or
socket error in any run; b's and c's reads were answered by the replica (their /metrics
`stockroom_db_reads_total{target="replica",reason="no token"|"caught up"}` grew by at least
the requests answered, at most that plus the connections, and no read went to the primary).

Visibility lag: a probe (this process, pinned to core 1 beside wrk, so as not to take the
measured server's core) commits `UPDATE bench_probe SET n = n + 1` on the primary directly
(asyncpg, autocommit: no API request in the way), reads `pg_current_wal_lsn()` on the same
connection right after the commit (as Stockroom's token after a write), then polls the
standby about every 1 ms (`pg_last_wal_replay_lsn() >= lsn`, and the row's n, to check that
it is then visible) until it has replayed past it. The time from the commit's answer to the
first poll that sees it is one sample (so the floor includes two round trips, the LSN's on
the primary and the first poll's on the standby; "polls p50" 1 means the first poll already
saw it); a probe starts about every 50 ms. Reported as p50/p99/max and the count, (1) with
no load (the floor), then (2) while wrk runs bench.py's adjust-random scenario
(POST /items/{random id}/adjustments, +1/-1, c=64) against server b for BENCH_LAG_SECONDS
(default 30) s; the ledger invariant is checked after it.

`--smoke` (or BENCH_SMOKE=1): phases of about 2 s, 1 round, 1,000 items, pools of 4: a check
that everything runs, not a measurement.

Writes results.md and results.json under bench/results/<UTC timestamp>/ ("-smoke" appended
for a smoke run) and prints the table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import bench  # bench/bench.py: its settings, Lua scripts, seed and ledger check
import httpx
import psutil
from wrkrun import free_port, run_wrk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_AS = "postgres"  # PostgreSQL refuses to run as root
DATABASE = "stockroom"
SMOKE, ITEMS, SECONDS, ROUNDS = bench.SMOKE, bench.ITEMS, bench.SECONDS, bench.ROUNDS
WARMUP_SECONDS, POOL_SIZE = bench.WARMUP_SECONDS, bench.POOL_SIZE
LAG_SECONDS = int(os.environ.get("BENCH_LAG_SECONDS", "2" if SMOKE else "30"))
CONNECTIONS = 64
PROBE_EVERY = 0.050  # seconds between the starts of two probes
POLL_EVERY = 0.001  # seconds between two polls of the standby
PROBE_TIMEOUT = 10.0  # a probe not visible by then is counted as such (and failed)
MAX_CPU_RATIO = 1.05  # b's CPU per request / a's
QUIET_SECONDS = 0.5
SETTLE_SECONDS, IDLE_SHARE = 20.0, 0.05
OFF, REPLICA, TOKEN = "a: replicas off", "b: replica", "c: replica + token"
VARIANTS = (OFF, REPLICA, TOKEN)
READS_REASON = {REPLICA: "no token", TOKEN: "caught up"}
SCENARIO = "get-c64"

_PG_SETTINGS = """
# bench/replicas.py
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
max_connections = 100
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 5
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
fsync = on
synchronous_commit = on
logging_collector = off
log_min_messages = warning
"""


# --- a primary and a hot standby of the bench's own ------------------------------------------


def _pg_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(RUN_AS)
    return entry.pw_uid, entry.pw_gid


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", TZ="UTC")
    return env


def pg_run(*args: str | Path, timeout: float = 120) -> str:
    """One of PostgreSQL's programs, as its user; its stdout (a failure says its stderr)."""
    ids = _pg_user()
    done = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_pg_env(),
        cwd="/",
        user=ids[0] if ids else None,
        group=ids[1] if ids else None,
        extra_groups=[] if ids else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} failed ({done.returncode}): {done.stderr}")
    return done.stdout


class PgServer:
    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.folder = folder / name
        self.folder.mkdir(mode=0o700)
        if ids := _pg_user():
            os.chown(self.folder, *ids)
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.started = False

    def configure(self, extra: str = "") -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(_PG_SETTINGS.format(port=self.port, sockets=self.folder) + extra)

    def start(self) -> None:
        self.started = True  # stopped at the end even if the start fails half-way
        pg_run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if not self.started:
            return
        try:
            pg_run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                pg_run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        self.started = False

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = DATABASE) -> str:
        return pg_run(
            PG_BIN / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql,
        ).strip()  # fmt: skip

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""


class Cluster:
    """The primary and its hot standby in one temporary folder."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"PostgreSQL 15 is not installed ({PG_BIN}); make bench-replicas")
        base = os.environ.get("BENCH_REPLICAS_DIR") or None
        self.folder = Path(tempfile.mkdtemp(prefix="stockroom-bench-replicas-", dir=base))
        self.folder.chmod(0o700)
        if ids := _pg_user():
            os.chown(self.folder, *ids)
        self.primary = PgServer(self.folder, "primary")
        self.standby = PgServer(self.folder, "standby")

    def start(self) -> None:
        primary, standby = self.primary, self.standby
        pg_run(PG_BIN / "initdb", "-D", primary.data, "-A", "trust", "-U", "postgres",
               "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")  # fmt: skip
        primary.configure()
        primary.start()
        primary.psql(f"CREATE DATABASE {DATABASE}", "postgres")
        pg_run(PG_BIN / "pg_basebackup", "-D", standby.data, "-h", "127.0.0.1",
               "-p", str(primary.port), "-U", "postgres", "-R", "-X", "stream",
               "--checkpoint=fast")  # fmt: skip
        # The copied postgresql.conf is the primary's; the lines appended last win.
        standby.configure("cluster_name = 'standby'\n")
        standby.start()
        deadline = time.monotonic() + 30
        while primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                           "postgres") != "1":  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby does not stream: {standby.log_tail()}")
            time.sleep(0.1)

    def close(self) -> None:
        for server in (self.standby, self.primary):
            try:
                server.stop()
            except Exception as exc:  # the folder goes anyway
                print(f"stopping the {server.name}: {exc}", flush=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- the servers -------------------------------------------------------------------------------


class Server:
    """One `stockroom serve` pinned to core 0 (as bench.py's Server, on our own cluster)."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "stockroom", "serve", "--port", str(self.port)]
        with log.open("w") as sink:
            self.process = subprocess.Popen(["taskset", "-c", "0", *command], env=env,
                                            stdout=subprocess.DEVNULL, stderr=sink)  # fmt: skip
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

    def settle(self) -> None:
        """Until the server is idle (the requests in flight when wrk stopped are done)."""
        started = time.monotonic()
        while time.monotonic() - started < SETTLE_SECONDS:
            before = self.cpu_seconds()
            time.sleep(0.2)
            if self.cpu_seconds() - before < IDLE_SHARE * 0.2:
                return

    def pause(self, paused: bool) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [self.ps, *self.ps.children(recursive=True)]:
                process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def reads(self) -> dict[tuple[str, str], float]:
        """stockroom_db_reads_total by (target, reason), from its /metrics."""
        counts = {}
        for line in httpx.get(self.url + "/metrics", timeout=60).text.splitlines():
            if line.startswith("stockroom_db_reads_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                counts[labels["target"], labels["reason"]] = float(line.rsplit(" ", 1)[1])
        return counts

    def replica_serving(self, timeout: float = 10) -> bool:
        """Until /readyz says its replica takes reads (after a freeze, a sample first)."""
        deadline = time.monotonic() + timeout
        while True:
            replicas = httpx.get(self.url + "/readyz", timeout=10).json().get("replicas", [])
            if replicas and all(r.get("serving") for r in replicas):
                return True
            if time.monotonic() > deadline:
                print(f"  {self.name}: replica not serving: {replicas}", flush=True)
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        self.pause(False)
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wrk(url: str, script: Path, seconds: float) -> dict[str, Any]:
    return run_wrk(["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
                    "--timeout", "10s", "--latency", "-s", str(script), url])  # fmt: skip


# --- the visibility-lag probe ------------------------------------------------------------------


async def probe_lag(cluster: Cluster, done: concurrent.futures.Future[Any] | None,
                    seconds: float, skip: float) -> dict[str, Any]:  # fmt: skip
    """Visibility-lag samples (ms): for ``seconds`` (or until ``done`` is, when given), after
    ``skip`` s of it (the load's start)."""
    primary = await asyncpg.connect(cluster.primary.dsn(DATABASE), timeout=10)
    standby = await asyncpg.connect(cluster.standby.dsn(DATABASE), timeout=10)
    samples: list[float] = []
    polls: list[int] = []
    invisible = timeouts = 0
    try:
        started = time.monotonic()
        await asyncio.sleep(skip)
        while True:
            now = time.monotonic()
            if done.done() if done is not None else now - started >= seconds:
                break
            n = await primary.fetchval("UPDATE bench_probe SET n = n + 1 WHERE id = 1 RETURNING n")
            committed = time.monotonic()
            lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
            count = 0
            while True:
                count += 1
                replayed = await standby.fetchval(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn
                )
                if replayed:
                    samples.append((time.monotonic() - committed) * 1000)
                    polls.append(count)
                    # In a statement of its own, as the service checks before its read: one
                    # statement's snapshot is taken before its functions run, so a row read
                    # beside pg_last_wal_replay_lsn() may predate the position it reports.
                    seen = await standby.fetchval("SELECT n FROM bench_probe WHERE id = 1")
                    invisible += seen < n
                    break
                if time.monotonic() - committed > PROBE_TIMEOUT:
                    timeouts += 1
                    break
                await asyncio.sleep(POLL_EVERY)
            await asyncio.sleep(max(0.0, now + PROBE_EVERY - time.monotonic()))
    finally:
        await primary.close()
        await standby.close()
    return {"samples_ms": samples, "polls": polls, "invisible": invisible, "timeouts": timeouts}


def lag_run(cluster: Cluster, done: concurrent.futures.Future[Any] | None, seconds: float,
            skip: float) -> dict[str, Any]:  # fmt: skip
    """probe_lag with this thread on core 1 (beside wrk), then back on every core."""
    cores = os.sched_getaffinity(0)
    if len(cores) > 1 and 1 in cores:
        os.sched_setaffinity(0, {1})
    try:
        return asyncio.run(probe_lag(cluster, done, seconds, skip))
    finally:
        os.sched_setaffinity(0, cores)


def pct(values: list[float], q: float) -> float:
    """The nearest-rank quantile (nan for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lag_summary(found: dict[str, Any]) -> dict[str, Any]:
    samples = found["samples_ms"]
    return {"samples": len(samples), "p50_ms": pct(samples, 0.50), "p99_ms": pct(samples, 0.99),
            "max_ms": max(samples, default=math.nan), "polls_p50": pct(found["polls"], 0.5),
            "invisible": found["invisible"], "timeouts": found["timeouts"]}  # fmt: skip


# --- the run ---------------------------------------------------------------------------------


def machine_facts(cluster: Cluster) -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2]
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    return (f"{os.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.platform(terse=True)}, Python {platform.python_version()}, PostgreSQL "
            f"{cluster.primary.psql('SHOW server_version')} (primary + hot standby of the "
            f"bench's own, {cluster.folder.parent}), {' '.join(wrk_version)}; load average "
            f"at the start {load}")  # fmt: skip


def token_lsn(token: str) -> str:
    """The WAL position of a Consistency-Token (its last 16 hex digits) as pg_lsn text."""
    position = int(token[-16:], 16)
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def main() -> None:
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = RESULTS / (stamp + ("-smoke" if SMOKE else ""))
    work = Path(tempfile.mkdtemp(prefix="stockroom-bench-replicas-work-"))

    def terminated(*_: object) -> None:
        print("SIGTERM: stopping the servers, removing the primary and the standby", flush=True)
        sys.exit(143)  # the finally clauses run

    signal.signal(signal.SIGTERM, terminated)
    cluster = Cluster()
    servers: dict[str, Server] = {}
    try:
        print(f"primary and standby in {cluster.folder}; {ITEMS:,} items"
              f"{' (smoke run)' if SMOKE else ''} ...", flush=True)  # fmt: skip
        cluster.start()
        facts = machine_facts(cluster)
        primary, standby = cluster.primary, cluster.standby
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        env.update(STOCKROOM_DATABASE_URL=primary.url(), STOCKROOM_LOG_LEVEL="warning")
        stockroom = [sys.executable, "-m", "stockroom"]
        subprocess.run([*stockroom, "migrate"], env=env, check=True, capture_output=True)
        primary.psql(bench.SEED_SQL)
        primary.psql("CREATE TABLE bench_probe (id int PRIMARY KEY, n bigint NOT NULL);"
                     "INSERT INTO bench_probe VALUES (1, 0)")  # fmt: skip
        create_key = [*stockroom, "apikey", "create", "--name", "bench", "--scopes", "write"]
        key = subprocess.run(create_key, env=env, check=True, capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}

        # Stockroom as shipped (bench.py's start_servers): default settings, only the
        # database(s) and the pool chosen.
        serve_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
        serve_env.update(STOCKROOM_DATABASE_URL=primary.url(),
                         STOCKROOM_DATABASE_POOL_SIZE=str(POOL_SIZE))  # fmt: skip
        servers[OFF] = Server(OFF, serve_env, work / "a.log")
        servers[REPLICA] = Server(
            REPLICA, {**serve_env, "STOCKROOM_DATABASE_REPLICA_URLS": standby.url()},
            work / "b.log",
        )  # fmt: skip
        servers[TOKEN] = servers[REPLICA]
        setup_s = time.monotonic() - started

        # The token of a write through b, replayed by the standby before the runs.
        answer = httpx.post(servers[REPLICA].url + "/items/1/adjustments", headers=headers,
                            json={"delta": 1})  # fmt: skip
        token = answer.headers.get("consistency-token", "")
        if answer.status_code != 201 or not re.fullmatch(r"[0-9a-f]{40}", token):
            raise SystemExit(f"a write through b: {answer.status_code}, token {token!r}")
        deadline = time.monotonic() + 10
        while standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{token_lsn(token)}'") != "t":
            if time.monotonic() > deadline:
                raise SystemExit(f"the standby did not replay up to the token {token}")
            time.sleep(0.01)
        if not servers[REPLICA].replica_serving():
            raise SystemExit("b's replica takes no reads")
        for name in VARIANTS:
            extra = {"Consistency-Token": token} if name == TOKEN else {}
            answer = httpx.get(servers[name].url + "/items/42", headers={**headers, **extra})
            if answer.status_code != 200:
                raise SystemExit(f"{name}: GET /items/42 answered {answer.status_code}")
        print(f"token {token} (replayed); GET /items/42 answered 200 by a, b and c", flush=True)

        lua = f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        scripts = {}
        for name in VARIANTS:
            script = work / f"{name[0]}.lua"
            header = f'wrk.headers["Consistency-Token"] = "{token}"\n' if name == TOKEN else ""
            script.write_text(lua + header + bench.GET % {"items": ITEMS})
            scripts[name] = script

        def measure(name: str, seconds: int, tag: str) -> dict[str, Any]:
            server = servers[name]
            for other in {*servers.values()} - {server}:
                other.pause(True)
            server.pause(False)
            time.sleep(QUIET_SECONDS)
            server.settle()
            serving = name == OFF or server.replica_serving()
            reads_before = server.reads()
            cpu_before = server.cpu_seconds()
            result: dict[str, Any] = wrk(server.url, scripts[name], seconds)
            result["cpu_s"] = server.cpu_seconds() - cpu_before
            server.settle()
            after = server.reads()
            result["reads"] = {
                f"{t}/{r}": after[t, r] - reads_before.get((t, r), 0.0)
                for t, r in after
                if after[t, r] != reads_before.get((t, r))
            }
            answered = result["requests"] - result["non_2xx"]
            if name == OFF:
                result["reads_ok"] = not result["reads"]
            else:
                on_replica = result["reads"].get(f"replica/{READS_REASON[name]}", 0.0)
                others = sum(result["reads"].values()) - on_replica
                result["reads_ok"] = (
                    serving and others == 0 and answered <= on_replica <= answered + CONNECTIONS
                )
            result["tag"] = tag
            return result

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        warmups = {name: measure(name, WARMUP_SECONDS, "warmup") for name in VARIANTS}
        for round_no in range(ROUNDS):
            for name in VARIANTS:
                r = measure(name, SECONDS, f"r{round_no + 1}")
                runs[name].append(r)
                print(f"{SCENARIO} round {round_no + 1} {name}: {r['rps']:,.0f} rps, p50 "
                      f"{r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors "
                      f"{r['errors']:.0f}, CPU {1000 * r['cpu_s'] / max(r['requests'], 1):.3f} "
                      f"ms/req, reads {r['reads']} ({'ok' if r['reads_ok'] else 'WRONG'})",
                      flush=True)  # fmt: skip

        # Visibility lag: with no load (every server frozen but b, idle), then under b's writes.
        for server in servers.values():
            server.pause(server is not servers[REPLICA])
        time.sleep(QUIET_SECONDS)
        floor = lag_run(cluster, None, LAG_SECONDS, 0.0)
        floor_row = lag_summary(floor)
        print(f"visibility lag, no load: {floor_row}", flush=True)
        adjust = work / "adjust.lua"
        adjust.write_text(lua + bench.ADJUST % {"target": f"math.random(1, {ITEMS})"})
        servers[REPLICA].settle()
        server = servers[REPLICA]
        cpu_before = server.cpu_seconds()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(wrk, server.url, adjust, LAG_SECONDS)
            loaded = lag_run(cluster, load, LAG_SECONDS, min(1.0, LAG_SECONDS / 4))
            write_run: dict[str, Any] = load.result()
        write_run["cpu_s"] = server.cpu_seconds() - cpu_before
        server.settle()
        loaded_row = lag_summary(loaded)
        for field in ("rps", "errors", "p50_ms", "p99_ms"):
            loaded_row[f"write_{field}"] = write_run[field]
        print(f"visibility lag, under adjust-random-c64: {loaded_row}", flush=True)
        mismatched, item_count, negative, adjustments = (
            int(n) for n in primary.psql(bench.LEDGER_SQL).split("|")
        )
        ledger_ok = mismatched == 0 and negative == 0
        if not ledger_ok:
            print(f"ledger BROKEN: {mismatched} mismatched, {negative} negative", flush=True)
    finally:
        for server in {*servers.values()}:
            server.stop()
        for log in sorted(work.glob("*.log")):
            wrong = ('"level":"error"', "Traceback", "ERROR")
            lines = [ln for ln in log.read_text().splitlines() if any(w in ln for w in wrong)]
            for line in lines[-5:]:
                print(f"  {log.stem} log: {line[:300]}")
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, dict[str, Any]] = {}
    for name, rounds in runs.items():
        requests = sum(r["requests"] for r in rounds)
        summary[name] = {
            "rps": sum(r["rps"] for r in rounds) / len(rounds),
            "p50_ms": sum(r["p50_ms"] for r in rounds) / len(rounds),
            "p99_ms": sum(r["p99_ms"] for r in rounds) / len(rounds),
            "errors": sum(r["errors"] for r in rounds),
            "requests": requests,
            "cpu_ms_per_request": 1000 * sum(r["cpu_s"] for r in rounds) / max(requests, 1),
            "cpu_ms_rounds": [1000 * r["cpu_s"] / max(r["requests"], 1) for r in rounds],
            "reads_ok": all(r["reads_ok"] for r in rounds),
            "reads": {
                k: sum(r["reads"].get(k, 0.0) for r in rounds)
                for k in {k for r in rounds for k in r["reads"]}
            },
        }
    base_cpu = summary[OFF]["cpu_ms_per_request"]
    for row in summary.values():
        row["cpu_ratio"] = row["cpu_ms_per_request"] / base_cpu if base_cpu else math.nan
    cpu_ratio = summary[REPLICA]["cpu_ratio"]
    token_ratio = summary[TOKEN]["cpu_ratio"]
    no_errors = all(row["errors"] == 0 for row in summary.values()) and all(
        r["errors"] == 0 for r in warmups.values()
    )
    reads_ok = all(row["reads_ok"] for row in summary.values())
    lag_ok = all(x["invisible"] == 0 and x["timeouts"] == 0 for x in (floor_row, loaded_row))
    checks: list[tuple[str, str, str, bool | None]] = [
        (f"{SCENARIO}: CPU per request, b (replica) / a (replicas off)", f"{cpu_ratio:.3f}x "
         f"({summary[REPLICA]['cpu_ms_per_request']:.3f} / {base_cpu:.3f} ms)",
         f"<= {MAX_CPU_RATIO:.2f}x", cpu_ratio <= MAX_CPU_RATIO),
        (f"{SCENARIO}: CPU per request, c (replica + token) / a", f"{token_ratio:.3f}x "
         f"({summary[TOKEN]['cpu_ms_per_request']:.3f} / {base_cpu:.3f} ms)", "no target", None),
        ("b's and c's reads answered by the replica (/metrics), none by the primary",
         "yes" if reads_ok else "**no**", "yes", reads_ok),
        ("no non-2xx answer or socket error (every GET run and warm-up, the write run)",
         f"{sum(row['errors'] for row in summary.values()):.0f} + "
         f"{write_run['errors']:.0f}", "0", no_errors and write_run["errors"] == 0),
        ("every probe's change visible on the standby once replayed past its LSN",
         "yes" if lag_ok else f"**no** ({floor_row} {loaded_row})", "yes", lag_ok),
        ("ledger invariant after the write run", f"{item_count:,} items, {mismatched} "
         f"mismatched, {negative} negative, {adjustments:,} ledger rows", "held", ledger_ok),
    ]  # fmt: skip

    def met(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "**no**")

    table = [
        "| scenario | server | rps | p50 ms | p99 ms | errors | CPU ms/req (rounds) "
        "| x a's CPU | reads (/metrics) | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        row = summary[name]
        rounds_text = ", ".join(f"{v:.3f}" for v in row["cpu_ms_rounds"])
        reads = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(row["reads"].items())) or "-"
        goal = {REPLICA: f"<= {MAX_CPU_RATIO:.2f}x a: {met(cpu_ratio <= MAX_CPU_RATIO)}",
                TOKEN: "no target"}.get(name, "")  # fmt: skip
        table.append(f"| {SCENARIO} | {name} | {row['rps']:,.0f} | {row['p50_ms']:.2f} "
                     f"| {row['p99_ms']:.2f} | {row['errors']:.0f} "
                     f"| {row['cpu_ms_per_request']:.3f} ({rounds_text}) | {row['cpu_ratio']:.3f}x "
                     f"| {reads} | {goal} |")  # fmt: skip
    lag_table = ["| visibility lag (commit on the primary -> replayed on the standby) | samples "
                 "| p50 ms | p99 ms | max ms | polls p50 | load: rps, p50/p99 ms, errors |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
    for what, row, load_text in (
        ("no write load (the floor)", floor_row, "-"),
        (f"adjust-random-c{CONNECTIONS} against b", loaded_row,
         f"{write_run['rps']:,.0f} rps, {write_run['p50_ms']:.1f}/{write_run['p99_ms']:.1f} ms, "
         f"{write_run['errors']:.0f} errors"),
    ):  # fmt: skip
        lag_table.append(f"| {what} | {row['samples']} | {row['p50_ms']:.2f} "
                         f"| {row['p99_ms']:.2f} | {row['max_ms']:.2f} | {row['polls_p50']:.0f} "
                         f"| {load_text} |")  # fmt: skip
    targets = ["| check | measured | target | met |", "|---|---|---|---|"]
    targets += [f"| {w} | {m} | {t} | {met(ok)} |" for w, m, t, ok in checks]
    minutes = (time.monotonic() - started) / 60
    command = ".venv/bin/python bench/replicas.py --smoke" if SMOKE else "make bench-replicas"
    text = "\n".join([
        f"# bench-replicas {stamp}{' (smoke run: the figures mean nothing)' if SMOKE else ''}",
        "",
        f"{facts}.",
        f"Each server: one `stockroom serve` on core 0, the other frozen; wrk -t1 c={CONNECTIONS} "
        f"on core 1; {ROUNDS} rounds x {SECONDS} s per server (a b c alternating) after "
        f"{WARMUP_SECONDS} s of warm-up each; {ITEMS:,} items; pools of {POOL_SIZE} "
        f"connections. a: replicas off; b: STOCKROOM_DATABASE_REPLICA_URLS = the standby; "
        f"c: b, each GET with a Consistency-Token the standby had replayed. rps, p50 and p99 are "
        f"the means of the rounds; CPU ms/req is the server process's user+system time per "
        f"answer (all rounds; each round's in brackets). Visibility lag: an UPDATE of a probe "
        f"table committed on the primary about every {PROBE_EVERY * 1000:.0f} ms, its "
        f"pg_current_wal_lsn() right after, the standby polled about every "
        f"{POLL_EVERY * 1000:.0f} ms until replayed past it; {LAG_SECONDS} s each (the probe "
        f"on core 1). Setup {setup_s:.0f} s; run took {minutes:.1f} min. Command: `{command}`",
        "",
        *table, "", *lag_table, "", *targets, "",
    ])  # fmt: skip
    out_dir.mkdir(parents=True)
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(
        {"stamp": stamp, "smoke": SMOKE, "machine": facts, "command": command,
         "seconds": SECONDS, "rounds": ROUNDS, "items": ITEMS, "pool_size": POOL_SIZE,
         "lag_seconds": LAG_SECONDS, "token": token, "summary": summary, "runs": runs,
         "warmups": warmups,
         "lag": {"floor": {**floor_row, "samples_ms": floor["samples_ms"]},
                 "under_writes": {**loaded_row, "samples_ms": loaded["samples_ms"]}},
         "write_run": write_run,
         "targets": [{"what": w, "measured": m, "target": t, "met": ok}
                     for w, m, t, ok in checks]}, indent=2, default=str))  # fmt: skip
    print()
    print(text)
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
