"""make bench-events: webhook deliveries/s and commit->delivery latency of a real
`stockroom serve` (dispatcher on) to a fast local receiver, on PostgreSQL.

- backlog: a webhook subscribed to "*", then BACKLOG events committed in one transaction
  (seeded with SQL, shaped like item.created events); deliveries/s = events / (last receipt
  - commit).
- log: RATE changes/s for SECONDS s committed straight into the log (one event per
  transaction, open loop, no API in the way): the event machinery at that rate.
- steady: POST /items at RATE/s (open loop: request i is due at start + i/RATE, whatever
  the answers before it) for SECONDS s; each creates one item.created event: the same, end
  to end, with the API's own work on the same machine.
Latency of an event = the receiver's clock when it got it - the event's created_at (taken
inside the writing transaction, just before its commit); same host, same clock.

Topologies (BENCH_TOPOLOGIES, both by default): "one", `stockroom serve` with its
dispatcher, as shipped; "two", the same plus one `stockroom worker` (another dispatcher
sharing the queue).

With BENCH_PIN=1 (the default) the server is pinned to core 0 (`taskset -c 0`), the worker,
the receiver (a minimal asyncio HTTP/1.1 server, this file with --receiver) and the load
driver to core 1; PostgreSQL is not pinned. BENCH_PIN=0 leaves all of it to the OS.
Writes results.md and results.json (with the raw latencies) under
bench/results/<UTC timestamp>/ and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import httpx
import orjson
import psutil
from wrkrun import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "stockroom_bench_events"
TARGETS = {"deliveries_per_s": 1000.0, "p99_s": 1.0}
SERVER_CORE, CLIENT_CORE = "0", "1"
# BENCH_PIN=0 leaves scheduling to the OS (a shared machine whose core 0 is busy otherwise).
PIN = os.environ.get("BENCH_PIN", "1") != "0" and shutil.which("taskset") is not None


# --- the receiver (a process of its own) -----------------------------------------------------


class _Receiving(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough: POST anything -> 204 and the receipt is noted
    (webhook-id, time); GET /count, GET /dump (JSON), POST /reset."""

    records: ClassVar[list[tuple[str, float]]] = []  # shared by every connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get("content-length", "0"))
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            method, path = lines[0].split(" ")[:2]
            self.answer(method, path, headers)

    def answer(self, method: str, path: str, headers: dict[str, str]) -> None:
        if method == "GET" and path == "/count":
            self.send(200, str(len(self.records)).encode())
        elif method == "GET" and path == "/dump":
            self.send(200, orjson.dumps(self.records))
        elif path == "/reset":
            self.records.clear()
            self.send(204, b"")
        else:
            self.records.append((headers.get("webhook-id", ""), time.time()))
            self.send(204, b"")

    def send(self, status: int, body: bytes) -> None:
        reason = {200: "OK", 204: "No Content"}[status]
        length = f"content-length: {len(body)}\r\n" if status != 204 else ""
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\n{length}\r\n".encode() + body)


def run_receiver(port: int) -> None:
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Receiving, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(serve())


# --- the run -----------------------------------------------------------------------------------


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if PIN else command


def wait_for(url: str, what: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url, timeout=2).status_code < 300:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# item.created-shaped events, as many as $1, written straight into the log.
SEED_SQL = """
INSERT INTO events (id, type, body, created_at)
SELECT e.id, 'item.created',
       json_build_object(
         'id', e.id, 'type', 'item.created',
         'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
         'data', json_build_object(
           'id', e.n, 'sku', 'SEED-' || e.n, 'name', 'Seeded item ' || e.n,
           'description', null, 'price', '10.00', 'quantity', 0, 'version', 1,
           'created_at', now(), 'updated_at', now()))::text,
       now()
FROM (SELECT gen_random_uuid()::text AS id, n FROM generate_series(1, $1) n) e
"""


async def seed_events(dsn: str, count: int) -> float:
    """Commit ``count`` item.created-shaped events in one transaction; returns the time
    just after the commit."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(SEED_SQL, count)
        return time.time()
    finally:
        await connection.close()


async def open_loop(rate: float, total: int) -> AsyncIterator[tuple[int, float]]:
    """(n, the time it is due) for n in 0..total-1, each at its time: start + n / rate,
    whatever happened to the ones before (open loop)."""
    start = time.perf_counter()
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield n, scheduled


async def commit_events(dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    """One event per transaction at ``rate``/s for ``seconds`` s, open loop, straight into
    the log (no API in the way): what the event machinery does at that rate of changes."""
    total = round(rate * seconds)
    lag: list[float] = []
    async with asyncpg.create_pool(dsn, min_size=8, max_size=8) as pool:

        async def one(scheduled: float) -> None:
            await pool.execute(SEED_SQL, 1)
            lag.append(time.perf_counter() - scheduled)

        start = time.perf_counter()
        tasks = [asyncio.create_task(one(due)) async for _, due in open_loop(rate, total)]
        await asyncio.gather(*tasks)
        took = time.perf_counter() - start
    return {
        "committed": total,
        "committed_per_s": total / took,
        "commit_p99_ms": percentile(lag, 99) * 1000,
    }


async def created_at(dsn: str, ids: list[str]) -> dict[str, float]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT id, extract(epoch FROM created_at)::float8 AS t FROM events "
            "WHERE id = ANY($1::text[])",
            ids,
        )
        return {row["id"]: row["t"] for row in rows}
    finally:
        await connection.close()


async def delivered_in_database(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
            )
        )
    finally:
        await connection.close()


def receipts(receiver: str) -> list[tuple[str, float]]:
    return [(i, t) for i, t in httpx.get(f"{receiver}/dump", timeout=60).json()]


def wait_for_receipts(receiver: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while int(httpx.get(f"{receiver}/count", timeout=10).text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the receiver did not get {count} deliveries in {within:.0f} s")
        time.sleep(0.05)


DRIVER_CONNECTIONS = 32


async def drive(base: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    """POST /items at ``rate``/s for ``seconds`` s, open loop: request i is due at
    start + i/rate and its time is counted from then, so a slow server cannot slow the
    driver down (no coordinated omission). The requests go over DRIVER_CONNECTIONS
    keep-alive connections of a minimal HTTP/1.1 client: httpx spends about a millisecond
    of CPU a request, which at 500/s would make the driver, not the server, the limit."""
    total = round(rate * seconds)
    statuses: dict[int, int] = {}
    durations: list[float] = []
    prefix = uuid.uuid4().hex[:6]
    url = httpx.URL(base)
    head = (
        f"POST /items HTTP/1.1\r\nhost: {url.host}\r\nauthorization: Bearer {key}\r\n"
        "content-type: application/json\r\n"
    ).encode()
    due: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        while (job := await due.get()) is not None:
            n, scheduled = job
            body = orjson.dumps({"sku": f"S-{prefix}-{n:06d}", "name": f"Item {n}", "price": 1})
            writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            try:
                answer = await reader.readuntil(b"\r\n\r\n")
                code = int(answer[9:12])
                length = 0
                for line in answer.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                code = 0
                writer.close()
                reader, writer = await asyncio.open_connection(url.host, url.port)
            durations.append(time.perf_counter() - scheduled)
            statuses[code] = statuses.get(code, 0) + 1
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(DRIVER_CONNECTIONS)]
    start = time.perf_counter()
    async for job in open_loop(rate, total):
        due.put_nowait(job)
    sent_for = time.perf_counter() - start
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    answered_for = time.perf_counter() - start
    return {
        "requests": total,
        "statuses": statuses,
        "sent_per_s": total / sent_for,
        "answered_per_s": total / answered_for,
        "request_p50_ms": percentile(durations, 50) * 1000,
        "request_p99_ms": percentile(durations, 99) * 1000,
    }


TOPOLOGIES = {
    "one": "`stockroom serve` (its dispatcher on, as shipped) on core 0",
    "two": "the same plus one `stockroom worker` (a second dispatcher) on core 1",
}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return float(sum(p.cpu_times().user + p.cpu_times().system for p in processes))


def measure(args: argparse.Namespace, topology: str, out_dir: Path) -> dict[str, Any]:
    """One run: a fresh database, the processes of ``topology``, the backlog, the steady
    writes. Returns the figures (raw latencies under "steady_latencies_s")."""
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE

    async def recreate() -> str:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {DATABASE}")
            return str(await admin.fetchval("SHOW server_version"))
        finally:
            await admin.close()

    results: dict[str, Any] = {"pg_version": asyncio.run(recreate())}
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")},
        "STOCKROOM_DATABASE_URL": url,
        "STOCKROOM_LOG_LEVEL": "warning",
        "STOCKROOM_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
        # Operator overrides for experiments (e.g. STOCKROOM_WEBHOOK_CONCURRENCY) pass through.
        **{k: v for k, v in os.environ.items() if k.startswith("STOCKROOM_WEBHOOK_")},
    }
    stockroom = [sys.executable, "-m", "stockroom"]
    subprocess.run([*stockroom, "migrate"], env=env, check=True)
    key = subprocess.run(
        [*stockroom, "apikey", "create", "--name", "bench", "--scopes", "admin"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip

    receiver_port, server_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    base = f"http://127.0.0.1:{server_port}"
    receiver = subprocess.Popen(
        pinned(CLIENT_CORE, [sys.executable, __file__, "--receiver", str(receiver_port)])
    )
    processes: list[subprocess.Popen[bytes]] = []
    with (out_dir / f"server-{topology}.log").open("w") as sink:
        processes.append(
            subprocess.Popen(
                pinned(SERVER_CORE, [*stockroom, "serve", "--port", str(server_port)]),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        )
        if topology == "two":
            processes.append(
                subprocess.Popen(
                    pinned(CLIENT_CORE, [*stockroom, "worker"]),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                )
            )
    if PIN:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})  # the load driver, beside the receiver
    try:
        wait_for(f"{receiver_url}/count", "the receiver")
        wait_for(f"{base}/healthz", "stockroom serve")
        ours = [psutil.Process(process.pid) for process in processes]
        hook = httpx.post(
            f"{base}/webhooks",
            json={"url": f"{receiver_url}/hook", "events": ["*"]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert hook.status_code == 201, hook.text

        # (a) a backlog of committed events, drained.
        print(f"[{topology}] backlog: {args.backlog:,} events ...", flush=True)
        cpu = cpu_seconds(ours)
        committed = asyncio.run(seed_events(dsn, args.backlog))
        wait_for_receipts(receiver_url, args.backlog, within=900)
        got = receipts(receiver_url)
        cpu_used = cpu_seconds(ours) - cpu
        last = max(t for _, t in got)
        print(f"  delivered in {last - committed:.1f} s", flush=True)
        results["backlog_seconds"] = last - committed
        results["backlog_deliveries_per_s"] = args.backlog / (last - committed)
        results["backlog_first_delivery_s"] = min(t for _, t in got) - committed
        results["backlog_duplicates"] = len(got) - len({i for i, _ in got})
        results["backlog_cpu_ms_per_delivery"] = cpu_used * 1000 / len(got)
        for _ in range(100):  # the outcomes are written in batches, just after
            if asyncio.run(delivered_in_database(dsn)) >= args.backlog:
                break
            time.sleep(0.1)
        results["backlog_delivered_in_database"] = asyncio.run(delivered_in_database(dsn))
        httpx.post(f"{receiver_url}/reset")

        # (b) a steady stream of changes committed straight into the log.
        print(f"[{topology}] log: {args.rate:.0f} changes/s for {args.seconds:.0f} s", flush=True)
        committed = asyncio.run(commit_events(dsn, args.rate, args.seconds))
        results.update({f"log_{k}": v for k, v in committed.items()})
        results.update(
            {
                f"log_{k}": v
                for k, v in latency_of_receipts(dsn, receiver_url, committed["committed"]).items()
            }
        )
        httpx.post(f"{receiver_url}/reset")

        # (c) steady writes through the API, latency from commit to delivery.
        print(
            f"[{topology}] steady: {args.rate:.0f} changes/s for {args.seconds:.0f} s", flush=True
        )
        cpu, started = cpu_seconds(ours), time.perf_counter()
        driven = asyncio.run(drive(base, key, args.rate, args.seconds))
        cpu_used = cpu_seconds(ours) - cpu
        busy = cpu_used / (time.perf_counter() - started)
        created = driven["statuses"].get(201, 0)
        print(f"  answers: {driven['statuses']}", flush=True)
        results.update({f"steady_{k}": v for k, v in driven.items()})
        results["steady_created"] = created
        results.update(
            {f"steady_{k}": v for k, v in latency_of_receipts(dsn, receiver_url, created).items()}
        )
        results["steady_cpu_cores_busy"] = busy
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        receiver.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        receiver.wait(timeout=10)

        async def drop() -> None:
            admin = await asyncpg.connect(ADMIN_DSN)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            finally:
                await admin.close()

        asyncio.run(drop())
    return results


def latency_of_receipts(dsn: str, receiver_url: str, count: int) -> dict[str, Any]:
    """Wait for ``count`` deliveries; commit -> first receipt of each (the event's
    created_at is taken in its transaction, just before the commit; same host, same clock)."""
    wait_for_receipts(receiver_url, count, within=300)
    got = receipts(receiver_url)
    births = asyncio.run(created_at(dsn, [i for i, _ in got]))
    first_receipt: dict[str, float] = {}
    for event_id, at in got:
        first_receipt.setdefault(event_id, at)
    latencies = [at - births[event_id] for event_id, at in first_receipt.items()]
    return {
        "events_delivered": len(first_receipt),
        "duplicates": len(got) - len(first_receipt),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": max(latencies),
        "latency_mean_s": statistics.fmean(latencies),
        "latencies_s": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backlog", type=int, default=int(os.environ.get("BENCH_BACKLOG", 20_000)))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("BENCH_RATE", 500)))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 20)))
    parser.add_argument(
        "--topologies", default=os.environ.get("BENCH_TOPOLOGIES", ",".join(TOPOLOGIES))
    )
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ROOT / "bench" / "results" / stamp
    out_dir.mkdir(parents=True)
    topologies = [t for t in args.topologies.split(",") if t]
    runs = {topology: measure(args, topology, out_dir) for topology in topologies}

    yes = {True: "yes", False: "**no**"}

    def row(label: str, target: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(runs[t]) for t in topologies) + f" | {target} |"

    table = [
        "| measure | " + " | ".join(topologies) + " | target |",
        "|---|" + "---|" * len(topologies) + "---|",
        row(
            f"backlog of {args.backlog:,} events: deliveries/s",
            ">= 1,000",
            lambda r: (
                f"{r['backlog_deliveries_per_s']:,.0f} ({r['backlog_seconds']:.1f} s), "
                f"met: {yes[r['backlog_deliveries_per_s'] >= TARGETS['deliveries_per_s']]}"
            ),
        ),
        row(
            "backlog: CPU of our processes per delivery",
            "",
            lambda r: f"{r['backlog_cpu_ms_per_delivery']:.2f} ms",
        ),
        row(
            "log: changes committed/s (one event per transaction)",
            f"{args.rate:,.0f}/s",
            lambda r: f"{r['log_committed_per_s']:,.0f} ({r['log_committed']:,})",
        ),
        row(
            "log: commit -> delivery p50 / p99",
            "p99 < 1,000 ms",
            lambda r: (
                f"{r['log_latency_p50_s'] * 1000:,.0f} ms / "
                f"{r['log_latency_p99_s'] * 1000:,.0f} ms, "
                f"met: {yes[r['log_latency_p99_s'] < TARGETS['p99_s']]}"
            ),
        ),
        row(
            "steady: POST /items due/s, answered/s (201s)",
            f"{args.rate:,.0f}/s",
            lambda r: (
                f"{r['steady_sent_per_s']:,.0f}, {r['steady_answered_per_s']:,.0f} "
                f"({r['steady_created']:,} of {r['steady_requests']:,})"
            ),
        ),
        row(
            "steady: POST /items p50 / p99",
            "",
            lambda r: (
                f"{r['steady_request_p50_ms']:,.0f} ms / {r['steady_request_p99_ms']:,.0f} ms"
            ),
        ),
        row(
            "steady: commit -> delivery p50",
            "",
            lambda r: f"{r['steady_latency_p50_s'] * 1000:,.0f} ms",
        ),
        row(
            "steady: commit -> delivery p99",
            "< 1,000 ms",
            lambda r: (
                f"{r['steady_latency_p99_s'] * 1000:,.0f} ms, "
                f"met: {yes[r['steady_latency_p99_s'] < TARGETS['p99_s']]}"
            ),
        ),
        row(
            "steady: commit -> delivery max",
            "",
            lambda r: f"{r['steady_latency_max_s'] * 1000:,.0f} ms",
        ),
        row(
            "steady: our processes' CPU (cores busy)",
            "",
            lambda r: f"{r['steady_cpu_cores_busy']:.2f}",
        ),
        row(
            "duplicates (backlog, log, steady)",
            "0",
            lambda r: f"{r['backlog_duplicates']}, {r['log_duplicates']}, {r['steady_duplicates']}",
        ),
    ]
    first = runs[topologies[0]]
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"PostgreSQL {first['pg_version']}, load average {os.getloadavg()[0]:.1f}, "
        + ("receiver and driver on core 1" if PIN else "not pinned")
    )
    text = "\n".join(
        [
            f"# bench-events {stamp}",
            "",
            machine,
            *(f"- {t}: {TOPOLOGIES[t]}" for t in topologies),
            "Command: `make bench-events`",
            "",
            *table,
            "",
        ]
    )
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(runs, indent=2))
    print()
    print(text)
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
