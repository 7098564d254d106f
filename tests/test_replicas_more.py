"""Read replicas with read-your-writes (issue #23), further: a property over two app instances
interleaving writes, reads and pauses of the standby's replay; the primary behind PgBouncer; a
replica read cancelled by a conflict with recovery; a replica stopped under concurrent reads.

On real PostgreSQL servers the tests make themselves (tests/support/pgservers.py), as
tests/test_replicas.py does. Staleness comes only from pausing the standby's replay, never
from a timed delay; every pause is resumed in a ``finally``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from tests.support.apps import client_for, create_key
from tests.support.databases import IN_CI
from tests.support.pgbouncer import start_pgbouncer
from tests.support.pgservers import PgServer, PgServers
from tests.support.replicas import (
    TOKEN,
    Cluster,
    caught_up,
    make_cluster,
    open_app,
    reads,
    replica_serving,
)
from tests.support.waiting import not_a_hang, wait_until

pytestmark = pytest.mark.postgresql_only

_TOKEN_FORM = re.compile(r"[0-9a-f]{40}")


@pytest.fixture
async def cluster(pg_servers: PgServers) -> Cluster:
    return await make_cluster(pg_servers)


# --- 1. the property: read-your-writes and monotonic reads across two apps -----------------


@dataclass
class Model:
    """What one client did and saw. ``states[item][version]``: the item at that version (name,
    quantity, ledger length) and the token of the write that made it; ``floor``: (token, item,
    version, ledger length) of every answer, the state a read carrying a token at or past
    that token must reflect at least."""

    names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    states: dict[int, dict[int, tuple[str, int, int, str]]] = field(default_factory=dict)
    floor: list[tuple[str, int, int, int]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # every token seen, in order
    greatest: str | None = None
    last_write: str = ""

    def saw(self, token: str) -> None:
        self.tokens.append(token)
        if self.greatest is None or token > self.greatest:
            self.greatest = token

    def wrote(self, item: int, name: str, quantity: int, ledger: int, token: str) -> None:
        assert token > self.last_write, "a later write has a greater token"
        self.last_write = token
        versions = self.states.setdefault(item, {})
        version = max(versions, default=0) + 1
        versions[version] = (name, quantity, ledger, token)
        self.floor.append((token, item, version, ledger))
        self.saw(token)

    def current(self, item: int) -> tuple[int, tuple[str, int, int, str]]:
        version = max(self.states[item])
        return version, self.states[item][version]

    def required(self, sent: str | None, item: int) -> tuple[int, int]:
        """The least (version, ledger length) a read sending ``sent`` may show of ``item``:
        every write at or before it (read-your-writes), every state an answer at or before it
        showed (monotonic reads)."""
        if sent is None:
            return 0, 0
        version = ledger = 0
        for token, seen_item, seen_version, seen_ledger in self.floor:
            if seen_item == item and token <= sent:
                version = max(version, seen_version)
                ledger = max(ledger, seen_ledger)
        return version, ledger

    def write_token(self, item: int, version: int) -> str:
        return self.states[item][version][3] if version else ""


def token_of(answer: httpx.Response, sent: str | None) -> str:
    token: str | None = answer.headers.get(TOKEN)
    assert token is not None, f"{answer.request.url} answered without {TOKEN}"
    assert _TOKEN_FORM.fullmatch(token), token
    if sent is not None:
        assert token >= sent, "an answer's token is at or past the one sent"
    return token


def check_item(
    model: Model, item: int, shown: dict[str, Any] | None, sent: str | None, token: str
) -> int:
    """The item as a read shows it (None: not found): a state the model knows, at or past
    what ``sent`` requires, and no later than the answer's own token. Its version."""
    need, _ = model.required(sent, item)
    if shown is None:
        version = 0
    else:
        version = shown["version"]
        name, quantity, _ledger, _token = model.states[item][version]
        assert (shown["name"], shown["quantity"]) == (name, quantity), (shown, version)
    assert version >= need, f"item {item}: version {version} read with a token needing {need}"
    assert model.write_token(item, version) <= token, "the answer's token is past what it shows"
    return version


Op = tuple[Any, ...]
APPS = st.integers(0, 1)
ITEMS = st.integers(0, 1)
# None: no token; "greatest": the greatest seen (the client's way, twice as likely); a number:
# an earlier token (mod how many).
SENT = st.one_of(st.none(), st.just("greatest"), st.just("greatest"), st.integers(0, 10_000))
OPS: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("rename"), APPS, ITEMS),
    st.tuples(st.just("adjust"), APPS, ITEMS, st.integers(1, 5)),
    st.tuples(st.just("get"), APPS, ITEMS, SENT),
    st.tuples(st.just("list"), APPS, SENT),
    st.tuples(st.just("ledger"), APPS, ITEMS, SENT),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
)

_examples = itertools.count(1)


@dataclass
class TwoApps:
    cluster: Cluster
    clients: list[httpx.AsyncClient]
    apps: list[FastAPI]


@pytest.fixture
async def two_apps(cluster: Cluster) -> AsyncIterator[TwoApps]:
    # A short wait for a replica to catch up: paused replay makes every read with a token
    # that is ahead wait it out before the primary answers.
    started = [
        await open_app(cluster.url, cluster.replica_url, database_replica_wait=0.02)
        for _ in range(2)
    ]
    apps = [app for app, _ in started]
    try:
        key = await create_key(apps[0], "replicas", ["write"])
        async with client_for(apps[0], key) as first, client_for(apps[1], key) as second:
            for app in apps:
                await wait_until(lambda app=app: replica_serving(app))
            yield TwoApps(cluster, [first, second], apps)
    finally:
        for _, lifespan in started:
            await lifespan.__aexit__(None, None, None)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(paused=st.booleans(), ops=st.lists(OPS, min_size=10, max_size=35))
async def test_tokens_give_read_your_writes_and_monotonic_reads_across_two_apps(
    two_apps: TwoApps, paused: bool, ops: list[Op]
) -> None:
    """``paused``: replay paused after the items are made (else only by a ``pause`` step),
    so that half the examples start with a standby behind every write."""
    cluster, clients = two_apps.cluster, two_apps.clients
    model = Model()
    example = next(_examples)
    ids: list[int] = []
    for n in range(2):
        sku = f"P{example}-{n}"
        created = await clients[n].post("/items", json={"sku": sku, "name": "n0", "price": 1})
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        model.wrote(ids[-1], "n0", 0, 0, token_of(created, None))

    before = [reads(app) for app in two_apps.apps]

    def sent_for(choice: Any) -> str | None:
        if choice is None or not model.tokens:
            return None
        if choice == "greatest":
            return model.greatest
        return model.tokens[int(choice) % len(model.tokens)]

    try:
        if paused:
            await asyncio.to_thread(cluster.standby.pause_replay)
        for op in ops:
            kind = op[0]
            if kind == "pause":
                await asyncio.to_thread(cluster.standby.pause_replay)
            elif kind == "resume":
                await asyncio.to_thread(cluster.standby.resume_replay)
            elif kind == "rename":
                item = ids[op[2]]
                name = f"n{next(model.names)}"
                answer = await clients[op[1]].patch(f"/items/{item}", json={"name": name})
                assert answer.status_code == 200, answer.text
                _, (_, quantity, ledger, _) = model.current(item)
                assert answer.json()["version"] == max(model.states[item]) + 1
                model.wrote(item, name, quantity, ledger, token_of(answer, None))
            elif kind == "adjust":
                item, delta = ids[op[2]], op[3]
                answer = await clients[op[1]].post(
                    f"/items/{item}/adjustments", json={"delta": delta}
                )
                assert answer.status_code == 201, answer.text
                _, (name, quantity, ledger, _) = model.current(item)
                assert answer.json()["quantity_after"] == quantity + delta
                model.wrote(item, name, quantity + delta, ledger + 1, token_of(answer, None))
            elif kind == "get":
                item, sent = ids[op[2]], sent_for(op[3])
                headers = {TOKEN: sent} if sent else {}
                answer = await clients[op[1]].get(f"/items/{item}", headers=headers)
                assert answer.status_code in (200, 404), answer.text
                token = token_of(answer, sent)
                shown = answer.json() if answer.status_code == 200 else None
                version = check_item(model, item, shown, sent, token)
                if version:
                    model.floor.append((token, item, version, model.states[item][version][2]))
                model.saw(token)
            elif kind == "list":
                sent = sent_for(op[2])
                headers = {TOKEN: sent} if sent else {}
                answer = await clients[op[1]].get(
                    "/items", params={"sort": "-id", "limit": 10}, headers=headers
                )
                assert answer.status_code == 200, answer.text
                token = token_of(answer, sent)
                rows = {row["id"]: row for row in answer.json()["data"]}
                for item in ids:
                    version = check_item(model, item, rows.get(item), sent, token)
                    if version:
                        ledger = model.states[item][version][2]
                        model.floor.append((token, item, version, ledger))
                model.saw(token)
            elif kind == "ledger":
                item, sent = ids[op[2]], sent_for(op[3])
                headers = {TOKEN: sent} if sent else {}
                answer = await clients[op[1]].get(
                    f"/items/{item}/adjustments", params={"limit": 500}, headers=headers
                )
                assert answer.status_code in (200, 404), answer.text
                token = token_of(answer, sent)
                _, need = model.required(sent, item)
                if answer.status_code == 404:
                    # Not replayed yet: only a read with no token that needs the item.
                    assert model.required(sent, item) == (0, 0), "404 despite the token"
                else:
                    rows = answer.json()["data"]
                    assert len(rows) >= need, f"ledger of {len(rows)} read needing {need}"
                    # The ledger as it was after its len(rows)-th adjustment: its token is
                    # at or before the answer's.
                    # The ledger as its len(rows)-th adjustment left it (the first state
                    # with that many): made at or before the answer's token.
                    made = min(
                        (version, state)
                        for version, state in model.states[item].items()
                        if state[2] == len(rows)
                    )[1]
                    assert made[3] <= token, "the answer's token is past what it shows"
                    if rows:
                        assert rows[0]["quantity_after"] == made[1]
                    model.floor.append((token, item, 0, len(rows)))
                model.saw(token)
    finally:
        await asyncio.to_thread(cluster.standby.resume_replay)
    # Where the reads ran, and why (--hypothesis-show-statistics): every route is taken.
    for app, earlier in zip(two_apps.apps, before, strict=True):
        for route, count in reads(app).items():
            if count > earlier.get(route, 0):
                event(f"read from the {route[0]}: {route[1]}")


# --- 2. the primary behind PgBouncer (transaction mode) -------------------------------------


async def test_read_your_writes_with_the_primary_behind_pgbouncer(cluster: Cluster) -> None:
    bouncer = await asyncio.to_thread(start_pgbouncer, cluster.primary.url, in_ci=IN_CI)
    try:
        proxied = make_url(cluster.url).set(port=bouncer.port)
        app, lifespan = await open_app(
            proxied.render_as_string(hide_password=False),
            cluster.replica_url,
            database_pgbouncer=True,
        )
        try:
            key = await create_key(app, "replicas", ["write"])
            async with client_for(app, key) as http:
                await stale_and_fresh_reads(app, http, cluster)
        finally:
            await lifespan.__aexit__(None, None, None)
    finally:
        await asyncio.to_thread(bouncer.stop)


async def stale_and_fresh_reads(app: FastAPI, http: httpx.AsyncClient, cluster: Cluster) -> None:
    """tests/test_replicas.py's first scenario: a read without a token is the paused
    replica's (stale), one with the write's token the primary's, then the replica's again."""
    await wait_until(lambda: replica_serving(app))
    created = await http.post("/items", json={"sku": "B-1", "name": "Before", "price": 1})
    assert created.status_code == 201, created.text
    item: dict[str, Any] = created.json()
    first = created.headers[TOKEN]
    await caught_up(cluster)
    await asyncio.to_thread(cluster.standby.pause_replay)
    try:
        changed = await http.patch(f"/items/{item['id']}", json={"name": "After"})
        assert changed.status_code == 200, changed.text
        written = changed.headers[TOKEN]
        assert written > first

        stale = await http.get(f"/items/{item['id']}")
        assert stale.json()["name"] == "Before"
        assert first <= stale.headers[TOKEN] < written
        assert reads(app).get(("replica", "no token"), 0) >= 1

        fresh = await http.get(f"/items/{item['id']}", headers={TOKEN: written})
        assert fresh.json()["name"] == "After"
        assert fresh.headers[TOKEN] >= written
        assert reads(app).get(("primary", "behind"), 0) == 1
        listed = await http.get("/items", headers={TOKEN: written})
        assert [row["name"] for row in listed.json()["data"]] == ["After"]
        assert listed.headers[TOKEN] >= written
    finally:
        await asyncio.to_thread(cluster.standby.resume_replay)

    await caught_up(cluster)
    again = await http.get(f"/items/{item['id']}", headers={TOKEN: written})
    assert again.json()["name"] == "After"
    assert reads(app).get(("replica", "caught up"), 0) >= 1
    assert reads(app).get(("primary", "behind"), 0) == 2


# --- 3. a replica read cancelled by a conflict with recovery --------------------------------


CONFLICTS = (
    "SELECT confl_lock + confl_deadlock FROM pg_stat_database_conflicts WHERE datname = 'stockroom'"
)


async def lock_conflicts(standby: PgServer, expected: int) -> bool:
    return bool(await standby.fetchval(CONFLICTS) == expected)


async def standby_app_waits_for_lock(standby: PgServer) -> bool:
    waiting = await standby.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'stockroom' AND wait_event_type = 'Lock'",
        database="stockroom",
    )
    return bool(waiting)


async def test_a_replica_read_cancelled_by_a_conflict_with_recovery_is_the_primarys(
    cluster: Cluster,
) -> None:
    """Deterministic, with no timing: on the primary, one transaction takes an ACCESS
    EXCLUSIVE lock on an index of ``items`` (REINDEX INDEX); once replayed, the standby's
    startup process holds it, so the app's read of an item there takes ``items``' ACCESS
    SHARE lock and waits for the index's. The same transaction then locks ``items`` itself:
    its replay conflicts with the lock the read holds, and with max_standby_streaming_delay
    = 0 the standby cancels the read at once. The app reads from the primary instead, which
    waits for the test's transaction to end (rolled back) and answers 200."""
    standby, primary = cluster.standby, cluster.primary
    await standby.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
    await standby.execute("SELECT pg_reload_conf()")
    await wait_until(
        lambda: standby.fetchval("SELECT current_setting('max_standby_streaming_delay') = '0'")
    )
    app, lifespan = await open_app(cluster.url, cluster.replica_url)
    try:
        key = await create_key(app, "replicas", ["write"])
        async with client_for(app, key) as http:
            created = await http.post("/items", json={"sku": "C-1", "name": "Kept", "price": 1})
            assert created.status_code == 201, created.text
            item = created.json()["id"]
            await caught_up(cluster)
            await wait_until(lambda: replica_serving(app))
            assert (await http.get(f"/items/{item}")).status_code == 200
            assert reads(app) == {("replica", "no token"): 1}
            conflicts_before = await standby.fetchval(CONFLICTS)
            index = await primary.fetchval(
                "SELECT indexrelid::regclass::text FROM pg_index"
                " WHERE indrelid = 'items'::regclass AND indisprimary",
                database="stockroom",
            )

            locker = await primary.connect("stockroom")
            try:
                transaction = locker.transaction()
                await transaction.start()
                await locker.execute(f"REINDEX INDEX {index}")
                await locker.execute("SELECT pg_switch_wal()")  # the lock's record is sent now
                await caught_up(cluster)
                async with not_a_hang():
                    read = asyncio.create_task(http.get(f"/items/{item}"))
                    await wait_until(lambda: standby_app_waits_for_lock(standby))
                    await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                    await locker.execute("SELECT pg_switch_wal()")
                    # Cancelled there, the read waits on the primary for this transaction.
                    await wait_until(lambda: reads(app).get(("primary", "replica failed")) == 1)
                    await transaction.rollback()
                    answer = await read
            finally:
                await locker.close()
            assert answer.status_code == 200, answer.text
            assert answer.json()["name"] == "Kept"
            assert TOKEN in answer.headers
            # The standby counts the cancellation (its statistics reach the view within a
            # second or so: waited for, not timed).
            await wait_until(lambda: lock_conflicts(standby, conflicts_before + 1))

            # The replica was not excluded for it: the next read is its own again.
            assert await replica_serving(app)
            assert (await http.get(f"/items/{item}")).status_code == 200
            assert reads(app).get(("replica", "no token")) == 2
    finally:
        await lifespan.__aexit__(None, None, None)


# --- 4. a replica stopped under concurrent reads --------------------------------------------

CONNECT_TIMEOUT = 1.0
READERS = 4


async def test_a_replica_stopped_under_concurrent_reads_costs_no_5xx_and_no_long_wait(
    cluster: Cluster,
) -> None:
    app, lifespan = await open_app(
        cluster.url, cluster.replica_url, database_connect_timeout=CONNECT_TIMEOUT
    )
    try:
        key = await create_key(app, "replicas", ["write"])
        async with client_for(app, key) as http:
            created = await http.post("/items", json={"sku": "S-1", "name": "Load", "price": 1})
            assert created.status_code == 201, created.text
            item, written = created.json()["id"], created.headers[TOKEN]
            await caught_up(cluster)
            await wait_until(lambda: replica_serving(app))

            stopped = asyncio.Event()
            after_stop = 0
            durations: list[float] = []
            failures: list[str] = []

            async def reader(n: int) -> None:
                nonlocal after_stop
                paths = [f"/items/{item}", "/items", f"/items/{item}/adjustments"]
                for i in itertools.count():
                    headers = {TOKEN: written} if (n + i) % 2 else {}
                    begun = time.monotonic()
                    answer = await http.get(paths[i % 3], headers=headers)
                    durations.append(time.monotonic() - begun)
                    if answer.status_code != 200 or TOKEN not in answer.headers:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    if stopped.is_set():
                        after_stop += 1
                        if after_stop >= READERS * 30:
                            return
                    await asyncio.sleep(0)

            async with not_a_hang():
                readers = [asyncio.create_task(reader(n)) for n in range(READERS)]
                await wait_until(lambda: len(durations) >= READERS * 10)
                await asyncio.to_thread(cluster.standby.stop)
                stopped.set()
                await asyncio.gather(*readers)

            assert not failures, failures[:5]
            assert max(durations) < 2 * CONNECT_TIMEOUT, max(durations)
            routes = reads(app)
            assert routes.get(("replica", "no token"), 0) + routes.get(("replica", "caught up"), 0)
            assert routes.get(("primary", "no replica serving"), 0) >= READERS * 10
            assert not await replica_serving(app)
    finally:
        await lifespan.__aexit__(None, None, None)


def freeze(server: PgServer) -> list[psutil.Process]:
    """SIGSTOP of the server's postmaster, then of its children (each backend is a session
    leader of its own, so the process group is the postmaster alone): it accepts TCP
    connections (the kernel does) and answers nothing, as a hung host would."""
    assert server.pid is not None
    postmaster = psutil.Process(server.pid)
    postmaster.suspend()
    frozen = [postmaster]
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.suspend()
            frozen.append(child)
    return frozen


async def test_a_frozen_replica_makes_no_request_wait_past_the_connect_timeout(
    cluster: Cluster,
) -> None:
    app, lifespan = await open_app(
        cluster.url,
        cluster.replica_url,
        database_connect_timeout=CONNECT_TIMEOUT,
        database_statement_timeout=1.0,  # asyncpg's command_timeout: 6 s
    )
    try:
        key = await create_key(app, "replicas", ["write"])
        async with client_for(app, key) as http:
            created = await http.post("/items", json={"sku": "F-1", "name": "Hung", "price": 1})
            assert created.status_code == 201, created.text
            item = created.json()["id"]
            await caught_up(cluster)
            await wait_until(lambda: replica_serving(app))
            for _ in range(5):  # pooled connections to the replica, idle
                assert (await http.get(f"/items/{item}")).status_code == 200
            assert reads(app).get(("replica", "no token")) == 5

            durations: list[float] = []

            async def read() -> int:
                begun = time.monotonic()
                answer = await http.get(f"/items/{item}")
                durations.append(time.monotonic() - begun)
                return answer.status_code

            frozen = await asyncio.to_thread(freeze, cluster.standby)
            try:
                async with not_a_hang():
                    statuses = await asyncio.gather(*(read() for _ in range(READERS)))
            finally:
                for process in frozen:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.resume()
            assert statuses == [200] * READERS  # never a 5xx
            assert max(durations) < 2 * CONNECT_TIMEOUT, sorted(durations)
    finally:
        await lifespan.__aexit__(None, None, None)


# --- 5. a replica read is bound by the statement timeout, with or without PgBouncer ---------

STATEMENT_TIMEOUT = 1.0


@pytest.mark.parametrize(
    "pgbouncer",
    [
        False,
        True,
    ],
    ids=["direct", "pgbouncer"],
)
async def test_a_replica_read_stuck_on_the_standby_ends_at_the_statement_timeout(
    cluster: Cluster, pgbouncer: bool
) -> None:
    """Deterministic: a lock on ``items``' primary key index, taken on the primary (REINDEX
    INDEX) and replayed, is held by the standby's startup process while replay is paused,
    after the primary's transaction has ended (so the primary reads freely). A read of the
    item on the standby waits for that lock until its statement timeout cancels it; the
    primary then answers. Measured against the setting (2x), not a speed claim."""
    primary, standby = cluster.primary, cluster.standby
    url, bouncer = cluster.url, None
    if pgbouncer:
        bouncer = await asyncio.to_thread(start_pgbouncer, primary.url, in_ci=IN_CI)
        url = make_url(url).set(port=bouncer.port).render_as_string(hide_password=False)
    try:
        app, lifespan = await open_app(
            url,
            cluster.replica_url,
            database_pgbouncer=pgbouncer,
            database_statement_timeout=STATEMENT_TIMEOUT,
            database_replica_max_lag=300.0,  # paused replay: still serving
        )
        try:
            key = await create_key(app, "replicas", ["write"])
            async with client_for(app, key) as http:
                created = await http.post("/items", json={"sku": "T-1", "name": "Held", "price": 1})
                assert created.status_code == 201, created.text
                item = created.json()["id"]
                await caught_up(cluster)
                await wait_until(lambda: replica_serving(app))
                index = await primary.fetchval(
                    "SELECT indexrelid::regclass::text FROM pg_index"
                    " WHERE indrelid = 'items'::regclass AND indisprimary",
                    database="stockroom",
                )
                locker = await primary.connect("stockroom")
                try:
                    async with locker.transaction():
                        await locker.execute(f"REINDEX INDEX {index}")
                        await locker.execute("SELECT pg_switch_wal()")
                        await caught_up(cluster)
                        await asyncio.to_thread(standby.pause_replay)
                finally:
                    await locker.close()
                try:
                    async with not_a_hang():
                        begun = time.monotonic()
                        answer = await http.get(f"/items/{item}")
                        took = time.monotonic() - begun
                finally:
                    await asyncio.to_thread(standby.resume_replay)
                assert answer.status_code == 200, answer.text
                assert reads(app).get(("primary", "replica failed")) == 1
                assert took < 2 * STATEMENT_TIMEOUT, took
        finally:
            await lifespan.__aexit__(None, None, None)
    finally:
        if bouncer is not None:
            await asyncio.to_thread(bouncer.stop)
