"""The outbox and the dispatcher as real processes on one PostgreSQL.

- A `stockroom serve` killed with SIGKILL in the middle of a stream of writes, then started
  again: the event log matches the items and ledger tables exactly (an event iff a committed
  change), and every event reaches the receiver at least once, correctly signed.
- Two `stockroom worker` processes share 1,000 events: each delivered exactly once, and
  both did part of the work.
- A worker stopped with SIGTERM while deliveries are in flight exits 0; the deliveries in
  flight either finish or are given back at once (not held until their lease ends), and
  another worker delivers them.

Receivers are real HTTP servers on 127.0.0.1 (tests/webhooks/receiver.py); signatures are
checked with the `standardwebhooks` package.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
import standardwebhooks
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.db import begin_write, utcnow
from stockroom.events import log as event_log
from stockroom.events.models import Event
from stockroom.items.event_types import ITEM_CREATED
from stockroom.items.models import Adjustment, Item
from stockroom.webhooks.models import Delivery
from tests.support.apps import create_key
from tests.support.servers import start_server, stockroom_env
from tests.support.waiting import wait_until
from tests.webhooks.dispatching import admin, running_app, subscribe
from tests.webhooks.receiver import Received, Receiver

pytestmark = pytest.mark.postgresql_only

# A dispatching process of these tests: receivers on 127.0.0.1, quick wake-ups.
DISPATCHING = {
    "STOCKROOM_WEBHOOK_DISPATCHER": "on",
    # Few connections each: the test's PostgreSQL may be shared.
    "STOCKROOM_DATABASE_POOL_SIZE": "4",
    "STOCKROOM_DATABASE_MAX_OVERFLOW": "4",
    "STOCKROOM_WEBHOOK_ALLOW_PRIVATE": "true",
    "STOCKROOM_EVENTS_POLL_SECONDS": "0.05",
}

# The in-test app that writes and reads (no dispatcher), with few connections too.
WRITER = {"webhook_dispatcher": False, "database_pool_size": 2, "database_max_overflow": 4}

# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[str]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (a crash's traceback, if any, is not one)."""
        return [orjson.loads(line) for line in self.log.read_text().splitlines() if line[:1] == "{"]

    def logged(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines())


def spawn_worker(database_url: str, tmp_path: Path, env_extra: dict[str, str]) -> Worker:
    """`stockroom worker`, as an operator runs it (see :func:`started`)."""
    log = tmp_path / f"worker-{uuid.uuid4().hex[:8]}.log"
    env = {**stockroom_env(database_url), **DISPATCHING, **env_extra}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "stockroom", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    return Worker(process, log)


async def started(*workers: Worker) -> None:
    """Once each worker says it has started (migrations done, dispatcher running)."""

    def up() -> bool:
        for worker in workers:
            assert worker.process.poll() is None, worker.log.read_text()
        return all(worker.logged("worker started") for worker in workers)

    await wait_until(up, within=60)


async def exit_status(process: subprocess.Popen[str]) -> int:
    return await asyncio.to_thread(process.wait, 60)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at its end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process)


def verified(received: list[Received], secret: str) -> Counter[str]:
    """How many times each event id was received; every request must carry a valid Standard
    Webhooks signature and the event's own id as webhook-id."""
    verifier = standardwebhooks.Webhook(secret)
    seen: Counter[str] = Counter()
    for request in received:
        payload = verifier.verify(request.body, request.headers)
        assert payload["id"] == request.headers["webhook-id"]
        seen[payload["id"]] += 1
    return seen


def received_ids(receiver: Receiver, path: str = "/ok") -> set[str]:
    return {request.headers["webhook-id"] for request in receiver.on(path)}


async def event_bodies(application: FastAPI) -> dict[str, str]:
    """Every event in the log: id -> body."""
    async with application.state.resources.engine.connect() as connection:
        return dict((await connection.execute(select(Event.id, Event.body))).all())


@dataclass(frozen=True)
class DeliveryState:
    status: str
    attempts: int  # attempts counted
    next_attempt_at: dt.datetime  # or, while an instance is sending it, the end of its lease


async def deliveries(application: FastAPI) -> dict[str, DeliveryState]:
    """The delivery of each event (one webhook): event id -> its state."""
    async with application.state.resources.engine.connect() as connection:
        rows = await connection.execute(
            select(Event.id, Delivery.status, Delivery.attempts, Delivery.next_attempt_at).join(
                Delivery, Delivery.event_seq == Event.seq
            )
        )
        return {event_id: DeliveryState(*state) for event_id, *state in rows}


async def all_delivered(application: FastAPI, count: int) -> bool:
    states = (await deliveries(application)).values()
    return len(states) == count and all(state.status == "delivered" for state in states)


async def log_events(application: FastAPI, count: int) -> None:
    """Commit ``count`` item.created events, 100 a transaction, through the log's own
    writer (the one the services call), without the items: quicker than ``count`` POSTs."""
    for start in range(0, count, 100):
        async with application.state.resources.sessions() as session:
            await begin_write(session)
            for n in range(start, min(start + 100, count)):
                event_log.record(session, ITEM_CREATED, f'{{"id":{n}}}', at=utcnow())
            await session.commit()


# --- SIGKILL under a stream of writes ----------------------------------------------------------


@dataclass
class Writes:
    """What the writing clients were told."""

    items: list[int] = field(default_factory=list)  # 201 to POST /items
    adjustments: list[int] = field(default_factory=list)  # 201 to POST .../adjustments
    refused: int = 0  # 409: not enough stock
    unavailable: int = 0  # 503: e.g. PostgreSQL refused a connection (it is shared)
    unanswered: int = 0  # the connection broke or could not be made (the kill)
    other: list[str] = field(default_factory=list)


async def write_stream(
    base_url: str, key: str, writes: Writes, until: asyncio.Event, *, seed: int
) -> None:
    """One client: create items (some with stock) and adjust those it knows of, until told
    to stop or the server is gone."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as http:
        n = 0
        while not until.is_set():
            n += 1
            try:
                if not writes.items or rng.random() < 0.4:
                    body = {
                        "sku": f"K-{seed}-{uuid.uuid4().hex[:8]}",
                        "name": f"Item {n}",
                        "price": "1.50",
                        "quantity": rng.choice([0, 0, 5]),
                    }
                    response = await http.post("/items", json=body)
                    if response.status_code == 201:
                        writes.items.append(response.json()["id"])
                        continue
                else:
                    item_id = rng.choice(writes.items)
                    body = {"delta": rng.choice([3, 2, 1, -1, -2]), "reason": "stream"}
                    response = await http.post(f"/items/{item_id}/adjustments", json=body)
                    if response.status_code == 201:
                        writes.adjustments.append(response.json()["id"])
                        continue
                    if response.status_code == 409:
                        writes.refused += 1
                        continue
                if response.status_code == 503:
                    writes.unavailable += 1
                    continue
                writes.other.append(f"{response.status_code} {response.text}")
            except httpx.TransportError:
                writes.unanswered += 1
                return


@pytest.mark.slow
async def test_sigkill_mid_stream_keeps_the_log_exact_and_every_event_is_delivered(
    database_url: str,
    tmp_path: Path,
    client: httpx.AsyncClient,
    receiver: Receiver,
    processes: list[subprocess.Popen[str]],
) -> None:
    # `client`: the tables are emptied afterwards. Short timeouts and a short lease: the
    # deliveries the killed process had claimed are due again 0.5 + 3 x 0.5 + 2 = 4 s later.
    env = {
        **DISPATCHING,
        "STOCKROOM_WEBHOOK_TIMEOUT": "0.5",
        "STOCKROOM_WEBHOOK_CONNECT_TIMEOUT": "0.5",
        "STOCKROOM_WEBHOOK_LEASE_SECONDS": "2",
    }
    first = start_server(database_url, tmp_path, env_extra=env)
    processes.append(first.process)
    async with running_app(database_url, **WRITER) as reader:
        key = await create_key(reader, f"stream-{uuid.uuid4().hex[:8]}", ["admin"])
        async with httpx.AsyncClient(
            base_url=first.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as http:
            hook = await subscribe(http, f"{receiver.url}/ok")

        # Killed once it has answered writes for a while and is delivering, writers busy.
        writes = Writes()
        until = asyncio.Event()
        writers = [
            asyncio.create_task(write_stream(first.url, key, writes, until, seed=seed))
            for seed in range(8)
        ]
        await wait_until(
            lambda: (
                len(writes.items) + len(writes.adjustments) >= 150 and len(receiver.on("/ok")) >= 50
            ),
            within=90,
        )
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        killed_at = time.monotonic()
        until.set()
        await asyncio.gather(*writers)
        answered_before_kill = len(writes.items) + len(writes.adjustments)

        # Started again on the same database, it takes writes and delivers what was left.
        second = start_server(database_url, tmp_path, env_extra=env)
        processes.append(second.process)
        until = asyncio.Event()
        writers = [
            asyncio.create_task(write_stream(second.url, key, writes, until, seed=100 + seed))
            for seed in range(4)
        ]
        await wait_until(
            lambda: len(writes.items) + len(writes.adjustments) >= answered_before_kill + 50,
            within=60,
        )
        until.set()
        await asyncio.gather(*writers)
        assert writes.other == []

        async with reader.state.resources.engine.connect() as connection:
            items = set((await connection.scalars(select(Item.id))).all())
            adjustments = {
                row.id: row for row in await connection.execute(select(Adjustment.__table__))
            }
            logged = [
                orjson.loads(body)
                for (body,) in await connection.execute(select(Event.body).order_by(Event.seq))
            ]

        # Every answered write committed; every committed change has exactly its event, and
        # there is no other event (none for a write that did not commit).
        assert set(writes.items) <= items
        assert set(writes.adjustments) <= set(adjustments)
        assert Counter(e["type"] for e in logged) == {
            "item.created": len(items),
            "stock.adjusted": len(adjustments),
        }
        created = Counter(e["data"]["id"] for e in logged if e["type"] == "item.created")
        assert created == Counter(items)
        adjusted = {e["data"]["id"]: e["data"] for e in logged if e["type"] == "stock.adjusted"}
        assert len(adjusted) == len(adjustments)
        for adjustment_id, row in adjustments.items():
            data = adjusted[adjustment_id]
            assert (data["item_id"], data["delta"], data["quantity_after"]) == (
                row.item_id,
                row.delta,
                row.quantity_after,
            )

        # Every event reaches the receiver (at least once: a delivery the killed process
        # had claimed but not recorded is sent again once its lease ends), as logged.
        bodies = await event_bodies(reader)
        await wait_until(lambda: set(bodies) <= received_ids(receiver), within=60)
        await wait_until(lambda: all_delivered(reader, len(bodies)))
        caught_up = time.monotonic() - killed_at
    seen = verified(receiver.on("/ok"), hook["secret"])
    assert set(seen) == set(bodies)
    for request in receiver.on("/ok"):
        assert request.body.decode() == bodies[request.headers["webhook-id"]]
    print(
        f"\nanswered writes {len(writes.items) + len(writes.adjustments)} "
        f"(before the kill {answered_before_kill}), unanswered {writes.unanswered}, "
        f"unavailable {writes.unavailable}, events {len(bodies)}, "
        f"sent twice {sum(1 for c in seen.values() if c > 1)}, "
        f"all delivered {caught_up:.1f} s after the kill"
    )

    second.process.send_signal(signal.SIGTERM)
    assert await exit_status(second.process) == 0


# --- two workers ---------------------------------------------------------------------------


def local_ports(pid: int, remote_port: int) -> set[int]:
    """The local ports of a process's open TCP connections to 127.0.0.1:``remote_port``."""
    return {
        connection.laddr.port
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.raddr and connection.raddr.port == remote_port
    }


async def test_two_workers_share_1000_events_and_deliver_each_once(
    database_url: str,
    tmp_path: Path,
    client: httpx.AsyncClient,
    receiver: Receiver,
    processes: list[subprocess.Popen[str]],
) -> None:
    # Each delivery takes a little while, so that neither worker can drain the queue alone.
    receiver.delay = 0.01
    workers = [spawn_worker(database_url, tmp_path, {}) for _ in range(2)]
    processes.extend(worker.process for worker in workers)
    await started(*workers)
    async with running_app(database_url, **WRITER) as application:
        async with await admin(application) as http:
            hook = await subscribe(http, f"{receiver.url}/slow")
        await log_events(application, 1000)
        bodies = await event_bodies(application)
        assert len(bodies) == 1000
        await wait_until(lambda: all_delivered(application, 1000), within=120)
        states = await deliveries(application)
    # Which worker sent what: the receiver saw each request's source port, and each worker
    # still holds its (kept-alive) connections.
    sender = {
        port: n
        for n, worker in enumerate(workers)
        for port in local_ports(worker.process.pid, receiver.port)
    }

    requests = receiver.on("/slow")
    assert verified(requests, hook["secret"]) == Counter(dict.fromkeys(bodies, 1))
    assert {state.attempts for state in states.values()} == {1}
    shares = Counter(
        sender.get(request.client[1]) if request.client else None for request in requests
    )
    assert shares[0] > 0, shares
    assert shares[1] > 0, shares
    print(f"\nworker 0 sent {shares[0]}, worker 1 sent {shares[1]}, unknown {shares[None]}")

    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        assert await exit_status(worker.process) == 0


# --- graceful shutdown -------------------------------------------------------------------------

IN_FLIGHT = 4


@pytest.mark.parametrize(
    ("answer_after", "shutdown_timeout", "finished"),
    [
        pytest.param(2.0, 30, True, id="in-flight-finish"),
        pytest.param(3600.0, 1, False, id="in-flight-given-back"),
    ],
)
async def test_sigterm_lets_deliveries_in_flight_finish_or_gives_them_back(
    database_url: str,
    tmp_path: Path,
    client: httpx.AsyncClient,
    receiver: Receiver,
    processes: list[subprocess.Popen[str]],
    answer_after: float,
    shutdown_timeout: int,
    finished: bool,
) -> None:
    """A worker stopped while it waits for a slow receiver: either the answers come within
    STOCKROOM_SHUTDOWN_TIMEOUT (delivered, one attempt each), or the deliveries are given
    back, due at once for another worker and with no attempt counted, rather than held
    for their lease (half a minute or more)."""
    receiver.delay = answer_after
    env = {
        "STOCKROOM_WEBHOOK_CONCURRENCY": str(IN_FLIGHT),
        "STOCKROOM_SHUTDOWN_TIMEOUT": str(shutdown_timeout),
    }
    worker = spawn_worker(database_url, tmp_path, env)
    processes.append(worker.process)
    await started(worker)
    async with running_app(database_url, **WRITER) as application:
        async with await admin(application) as http:
            hook = await subscribe(http, f"{receiver.url}/slow")
        await log_events(application, 10)
        await wait_until(lambda: len(receiver.on("/slow")) == IN_FLIGHT)

        worker.process.send_signal(signal.SIGTERM)
        assert await exit_status(worker.process) == 0
        in_flight = received_ids(receiver, "/slow")
        assert len(in_flight) == IN_FLIGHT
        now = utcnow()
        states = await deliveries(application)
        assert len(states) == 10
        for event_id, state in states.items():
            if finished and event_id in in_flight:
                assert (state.status, state.attempts) == ("delivered", 1)
            else:
                assert (state.status, state.attempts) == ("pending", 0)
                assert state.next_attempt_at <= now  # due: not held by the stopped worker
        gave_back = [line for line in worker.lines() if line.get("which") == "unfinished"]
        assert [line["count"] for line in gave_back] == ([] if finished else [IN_FLIGHT])

        # Another worker delivers the rest (and, if given back, those in flight again).
        receiver.delay = 0
        other = spawn_worker(database_url, tmp_path, env)
        processes.append(other.process)
        await started(other)
        await wait_until(lambda: all_delivered(application, 10), within=60)
        assert {state.attempts for state in (await deliveries(application)).values()} == {1}

    seen = verified(receiver.on("/slow"), hook["secret"])
    assert set(seen) == set(states)
    assert {event_id for event_id, count in seen.items() if count > 1} == (
        set() if finished else in_flight
    )
    other.process.send_signal(signal.SIGTERM)
    assert await exit_status(other.process) == 0
