"""Failover (issue #23): a real `stockroom serve` whose database URL names a primary and its
synchronous standby (``target_session_attrs=read-write``, tests/support/pgservers.py),
under 8 writers while the primary's postmaster is killed with SIGKILL and, a second later,
the standby is promoted. The service is never restarted.

Throughout, every answer is the request's success or a 503 problem with ``Retry-After``
(never a 500, never a hang: every request has a client timeout); after the promotion the
same process writes again, on the new primary. With synchronous replication nothing
acknowledged is lost: every 201 adjustment is on the new primary, each item's ledger adds up
to its quantity, and every ledger row has its ``stock.adjusted`` event. The live stream
(opened with a stream token, as a browser's EventSource), cut at the kill and resumed with
``Last-Event-ID`` (503 until the promotion), sees every event of the log exactly once, and a
webhook receiver gets every event (at least once).

Also: with every host a standby, each kind of request is a 503 at once until one is
promoted; and a first host that accepts TCP and never answers costs only the first
connection its connect timeout (``database/hosts.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stockroom.migrations import upgrade_async
from tests.support.apps import client_for, make_settings, start_app
from tests.support.outages import (
    LEDGER_TOTALS_SQL,
    Recorder,
    neither_success_nor_503,
    why,
)
from tests.support.pgservers import PgServer, PgServers
from tests.support.servers import Server, cli_create_key, start_server
from tests.support.waiting import wait_until
from tests.webhooks.receiver import Receiver, RunningReceiver

pytestmark = pytest.mark.postgresql_only

WRITERS = 8
LOAD_SECONDS = 7.0
KILL_AT = 2.0
PROMOTE_AFTER = 1.0
# No request may take longer than this: a hang fails the test.
REQUEST_TIMEOUT = 10.0
# Every key's cache entry expires this often: requests keep looking their key up in the
# database, during the outage too.
AUTH_CACHE_SECONDS = "0.2"
DATABASE = "stockroom"


@dataclass
class StreamLog:
    """What a stream reader saw: each event's log id, in order, across its reconnections."""

    ids: list[str] = field(default_factory=list)
    first: tuple[int, int] | None = None  # the position of the first event seen
    cursor: str | None = None  # the last event's id: where a new connection resumes
    connections: int = 0
    refusals: Counter[int] = field(default_factory=Counter)
    # Set to make the reader drop its connection and resume with Last-Event-ID, as a
    # client whose connection the failover cut would.
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    cuts: int = 0

    def consume(self, line: str, fields: dict[str, str]) -> None:
        if line == "":
            if "data" in fields and "id" in fields:
                self.ids.append(orjson.loads(fields["data"])["id"])
                self.cursor = fields["id"]
                if self.first is None:
                    txid, _, seq = self.cursor.partition("-")
                    self.first = (int(txid), int(seq))
            fields.clear()
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def _read_stream(base_url: str, token: str, log: StreamLog, stop: asyncio.Event) -> None:
    """Read GET /events?token= (a stream token, as a browser's EventSource) until ``stop``;
    resume with Last-Event-ID whenever the stream ends, is cut (``log.cut``) or cannot be
    opened (a 503 while there is no primary)."""

    async def read(response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            log.consume(line, fields)

    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30, read=None)) as http:
        while not stop.is_set():
            headers = {} if log.cursor is None else {"Last-Event-ID": log.cursor}
            try:
                async with http.stream(
                    "GET", "/events", params={"token": token}, headers=headers
                ) as response:
                    if response.status_code != 200:
                        log.refusals[response.status_code] += 1
                        await asyncio.sleep(0.2)
                        continue
                    log.connections += 1
                    reading = asyncio.create_task(read(response))
                    cut = asyncio.create_task(log.cut.wait())
                    await asyncio.wait({reading, cut}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (reading, cut):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, httpx.TransportError):
                            await task
                    if log.cut.is_set():
                        log.cut.clear()
                        log.cuts += 1
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def _load(http: httpx.AsyncClient, item_ids: list[int], until: float, rec: Recorder) -> None:
    async def call(what: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        try:
            response = await http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            rec.hangs.append((what, time.monotonic() - rec.started))
            return None
        rec.note(what, response)
        return response

    async def writer(item_id: int) -> None:
        for n in itertools.count():
            if time.monotonic() >= until:
                return
            response = await call(
                "POST /items/{id}/adjustments",
                "POST",
                f"/items/{item_id}/adjustments",
                json={"delta": 1 + n % 3, "reason": "failover"},
            )
            if response is not None and response.status_code == 201:
                rec.acknowledged.append(response.json()["id"])
            else:
                await asyncio.sleep(0.02)

    async def prober(offset: int) -> None:
        """Reads and the readiness check, in turn (the key's cache entry keeps expiring)."""
        for n in itertools.count(offset):
            if time.monotonic() >= until:
                return
            item_id = item_ids[n % len(item_ids)]
            kind = n % 3
            if kind == 0:
                await call("GET /items/{id}", "GET", f"/items/{item_id}")
            elif kind == 1:
                await call("GET /items/{id}/adjustments", "GET", f"/items/{item_id}/adjustments")
            else:
                await call("GET /readyz", "GET", "/readyz")
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(i) for i in item_ids), *(prober(k) for k in range(2)))


async def _fail_over(
    primary: PgServer, standby: PgServer, rec: Recorder, stream: StreamLog
) -> tuple[float, float]:
    """kill -9 of the primary at KILL_AT, promotion of the standby PROMOTE_AFTER later; when
    each happened (promoted: once it takes writes). The stream's reader drops its connection
    at the kill: it resumes with Last-Event-ID, refused (503) until the promotion."""
    await asyncio.sleep(KILL_AT - (time.monotonic() - rec.started))
    killed = time.monotonic() - rec.started
    await asyncio.to_thread(primary.kill9)
    stream.cut.set()
    await asyncio.sleep(PROMOTE_AFTER)
    await asyncio.to_thread(standby.promote)
    return killed, time.monotonic() - rec.started


def _warnings(server: Server) -> dict[str, int]:
    """The server's warnings and errors, by event, with how many times each was logged."""
    told: Counter[str] = Counter()
    for line in server.log_lines():
        if line.get("level") in ("warning", "error"):
            told[f"{line.get('event')} {line.get('error', '')}".strip()] += 1
    return dict(told)


async def test_failover_to_a_promoted_synchronous_standby_under_load(
    pg_servers: PgServers, tmp_path: Path
) -> None:
    primary = await asyncio.to_thread(pg_servers.start, "primary")
    await asyncio.to_thread(primary.create_database, DATABASE)
    standby = await asyncio.to_thread(primary.make_standby, "standby", synchronous=True)
    # Both hosts, the primary first; only the one that takes writes is used.
    url = (
        f"postgresql+asyncpg://postgres@/{DATABASE}?host=127.0.0.1:{primary.port}"
        f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
    )
    env = {
        "STOCKROOM_AUTH_CACHE_SECONDS": AUTH_CACHE_SECONDS,
        "STOCKROOM_WEBHOOK_ALLOW_PRIVATE": "true",
        "STOCKROOM_DATABASE_CONNECT_TIMEOUT": "2",
    }
    with RunningReceiver() as receiver:
        server = await asyncio.to_thread(start_server, url, tmp_path, env_extra=env)
        try:
            await _run(server, url, tmp_path, primary, standby, receiver)
        finally:
            server.process.kill()
            await asyncio.to_thread(server.process.wait)


async def _run(
    server: Server,
    url: str,
    tmp_path: Path,
    primary: PgServer,
    standby: PgServer,
    receiver: Receiver,
) -> None:
    key = await asyncio.to_thread(cli_create_key, url, tmp_path, "write")
    admin_key = await asyncio.to_thread(cli_create_key, url, tmp_path, "admin")
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits
    ) as http:
        hook = await http.post(
            "/webhooks",
            json={"url": f"{receiver.url}/ok", "events": ["*"]},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert hook.status_code == 201, hook.text
        item_ids = []
        for n in range(WRITERS):
            body = {"sku": f"FAIL-{n}-{uuid.uuid4().hex[:6]}", "name": "Failover", "price": 1}
            created = await http.post("/items", json=body)
            assert created.status_code == 201, created.text
            item_ids.append(created.json()["id"])

        stream = StreamLog()
        stop_stream = asyncio.Event()
        minted = await http.post("/events/tokens")
        assert minted.status_code == 201, minted.text
        token = minted.json()["token"]
        reader = asyncio.create_task(_read_stream(server.url, token, stream, stop_stream))
        # The stream follows from where it subscribed: from its first event on, it must
        # see every one.
        before: list[int] = []

        async def streaming() -> bool:
            if stream.ids:
                return True
            response = await http.post(f"/items/{item_ids[0]}/adjustments", json={"delta": 1})
            assert response.status_code == 201, response.text
            before.append(response.json()["id"])
            await asyncio.sleep(0.05)
            return bool(stream.ids)

        await wait_until(streaming)

        rec = Recorder()
        rec.acknowledged.extend(before)
        until = rec.started + LOAD_SECONDS
        failover = asyncio.create_task(_fail_over(primary, standby, rec, stream))
        await _load(http, item_ids, until, rec)
        killed, promoted = await failover

        # The same process writes again, on the new primary, with no restart.
        after = await http.post(f"/items/{item_ids[0]}/adjustments", json={"delta": 1})
        assert after.status_code == 201, after.text
        rec.acknowledged.append(after.json()["id"])
        assert (await http.get("/readyz")).status_code == 200
    assert server.process.poll() is None

    # No request hung, and every answer was a success or a 503 problem with Retry-After.
    assert not rec.hangs, f"{len(rec.hangs)} requests got no answer in time: {rec.hangs[:5]}"
    wrong = neither_success_nor_503(rec.answers)
    assert not wrong, (
        f"{len(wrong)} of {len(rec.answers)} answers neither a success nor a 503 problem: "
        f"{sorted({(a.what, a.status) for a in wrong})}; the server logged: "
        f"{why(server, {a.request_id for a in wrong})}"
    )
    # The database's absence is expected: warnings, never an error with a traceback.
    errors = [line for line in server.log_lines() if line.get("level") in ("error", "critical")]
    assert not errors, [
        (line.get("event"), str(line.get("exception", "")).strip().splitlines()[-1:])
        for line in errors[:5]
    ]
    refused = [a for a in rec.answers if a.status == 503]
    assert refused, "nothing was refused: the primary did not go away"
    # Writes succeeded again soon after the promotion, without a restart.
    writes_after = [
        a for a in rec.answers if a.what.startswith("POST") and a.status == 201 and a.at > promoted
    ]
    assert writes_after, f"no write succeeded between the promotion ({promoted:.2f} s) and the end"
    last_503 = max(a.at for a in refused)
    assert last_503 < promoted + 3, (last_503, promoted)

    # Nothing acknowledged was lost: every 201 is on the new primary.
    ledger = {
        row["id"]: row["item_id"]
        for row in await standby.fetch("SELECT id, item_id FROM adjustments", database=DATABASE)
    }
    lost = set(rec.acknowledged) - set(ledger)
    assert not lost, f"{len(lost)} of {len(rec.acknowledged)} acknowledged adjustments lost"
    sums = await standby.fetch(
        LEDGER_TOTALS_SQL,
        database=DATABASE,
    )
    assert all(row["quantity"] == row["total"] for row in sums), [
        tuple(row) for row in sums if row["quantity"] != row["total"]
    ]
    events = await standby.fetch(
        "SELECT id, type, body, txid, seq FROM events ORDER BY txid, seq", database=DATABASE
    )
    adjusted = {
        orjson.loads(row["body"])["data"]["id"] for row in events if row["type"] == "stock.adjusted"
    }
    missing = set(ledger) - adjusted
    assert not missing, f"{len(missing)} ledger rows have no stock.adjusted event"
    assert stream.first is not None
    logged = {row["id"] for row in events if (row["txid"], row["seq"]) >= stream.first}

    # The stream, resumed across the failover, saw every event once; the receiver got each.
    async def streamed_all() -> bool:
        return set(stream.ids) >= logged

    try:
        await wait_until(streamed_all, within=15)
    except AssertionError:
        unseen = logged - set(stream.ids)
        where = {row["id"]: (row["txid"], row["seq"]) for row in events}
        order = [where[e] for e in stream.ids]
        raise AssertionError(
            f"unseen at {sorted(where[e] for e in unseen)}; streamed around them: "
            f"{[p for p in order if abs(p[0] - min(where[e] for e in unseen)[0]) < 40]} "
            f"the stream missed {len(unseen)} of {len(logged)} events (saw {len(stream.ids)} "
            f"over {stream.connections} connections, refused {dict(stream.refusals)}); "
            f"the server's warnings: {_warnings(server)}"
        ) from None
    finally:
        stop_stream.set()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    repeated = [event for event, n in Counter(stream.ids).items() if n > 1]
    assert not repeated, f"{len(repeated)} events streamed more than once"
    assert set(stream.ids) == logged
    # It was cut at the kill and resumed from the new primary with Last-Event-ID.
    assert stream.cuts >= 1
    assert stream.connections >= 2, (stream.cuts, stream.connections)

    def delivered() -> set[str]:
        return {orjson.loads(body)["id"] for body in receiver.bodies("/ok")}

    everything = {row["id"] for row in events}
    await wait_until(lambda: delivered() >= everything, within=20)

    by_kind: dict[str, dict[int, int]] = {}
    for a in rec.answers:
        counts = by_kind.setdefault(a.what, {})
        counts[a.status] = counts.get(a.status, 0) + 1
    adjustments = by_kind.get("POST /items/{id}/adjustments", {})
    print(
        f"\nfailover: killed at {killed:.2f} s, promoted at {promoted:.2f} s, last 503 at "
        f"{last_503:.2f} s; adjustments: {len(rec.acknowledged)} acknowledged, "
        f"{sum(n for s, n in adjustments.items() if s != 201)} refused; {len(refused)} "
        f"answers 503 of {len(rec.answers)}; by request: {by_kind}; events {len(logged)}, "
        f"streamed {len(stream.ids)} over {stream.connections} connections "
        f"(refused {dict(stream.refusals)}), webhooks {len(receiver.bodies('/ok'))} bodies"
    )


async def test_while_every_host_is_a_standby_requests_are_503_until_one_is_promoted(
    pg_servers: PgServers, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every host up, none takes writes: a connection to a standby is never used (asyncpg
    says no host matches ``target_session_attrs``); every request, whichever pool it uses, is
    a 503 with Retry-After at once; after the promotion the same process serves."""
    primary = await asyncio.to_thread(pg_servers.start, "primary")
    await upgrade_async(await asyncio.to_thread(primary.create_database, DATABASE))
    standby = await asyncio.to_thread(primary.make_standby, "standby")
    await asyncio.to_thread(primary.stop)
    host = f"127.0.0.1:{standby.port}"
    url = (
        f"postgresql+asyncpg://postgres@/{DATABASE}?host={host}&host={host}"
        "&target_session_attrs=read-write"
    )
    settings = make_settings(url, auth=False, database_connect_timeout=2)
    application, lifespan = await start_app(settings)
    try:
        # The start-up's clean-ups fail (no primary): a warning each, not an error.
        told: list[dict[str, Any]] = []

        def purges() -> list[dict[str, Any]]:
            lines = capfd.readouterr().err.splitlines()
            told.extend(orjson.loads(line) for line in lines if line.startswith("{"))
            return [entry for entry in told if entry["event"] == "purge failed; will retry"]

        await wait_until(lambda: len(purges()) >= 2)
        assert all(entry["level"] == "warning" for entry in purges()), purges()
        async with client_for(application) as http:
            item = {"sku": "STANDBY-1", "name": "Standby", "price": 1}
            calls = [
                ("GET", "/items", None),  # the requests' pool
                ("POST", "/items", item),
                ("GET", "/webhooks", None),  # the SQLAlchemy engine
                ("GET", "/readyz", None),
            ]
            for method, path, body in calls:
                started = time.monotonic()
                response = await http.request(method, path, json=body)
                took = time.monotonic() - started
                assert response.status_code == 503, (method, path, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert "retry-after" in response.headers, (method, path)
                assert took < 2, (method, path, took)

            await asyncio.to_thread(standby.promote)
            created = await http.post("/items", json=item)
            assert created.status_code == 201, created.text
            assert (await http.get("/webhooks")).status_code == 200
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_a_host_that_never_answers_costs_one_connect_timeout_not_every_connection(
    pg_servers: PgServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first host accepts TCP connections and never says a word (a machine gone silent):
    each host has a connect timeout of its own, so the primary behind it is reached; and the
    host that took writes is tried first from then on, so only the first connection waits."""
    primary = await asyncio.to_thread(pg_servers.start, "primary")
    await asyncio.to_thread(primary.create_database, DATABASE)
    monkeypatch.setenv("STOCKROOM_DATABASE_CONNECT_TIMEOUT", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the kernel answers TCP, nobody PostgreSQL
        url = (
            f"postgresql+asyncpg://postgres@/{DATABASE}?host=127.0.0.1:{silent.getsockname()[1]}"
            f"&host=127.0.0.1:{primary.port}&target_session_attrs=read-write"
        )
        started = time.monotonic()
        await upgrade_async(url)  # stockroom migrate, through the silent host too
        assert time.monotonic() - started < 10
        settings = make_settings(url, auth=False, database_connect_timeout=1)
        application, lifespan = await start_app(settings)
        try:
            async with client_for(application) as http:
                body = {"sku": "SILENT-1", "name": "Silent", "price": 1}
                created = await http.post("/items", json=body)
                assert created.status_code == 201, created.text
                assert (await http.get("/webhooks")).status_code == 200  # the other pool
                # New connections go to the primary at once.
                pool = application.state.resources.stores.database._pool.connections
                for _ in range(3):
                    await pool.expire_connections()
                    started = time.monotonic()
                    answer = await http.get(f"/items/{created.json()['id']}")
                    assert answer.status_code == 200, answer.text
                    assert time.monotonic() - started < 0.5
        finally:
            await lifespan.__aexit__(None, None, None)
