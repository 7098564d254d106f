"""Read replicas and read-your-writes, on real PostgreSQL servers the test makes itself: a
primary and a hot standby (pg_basebackup -R, tests/support/pgservers.py), never the machine's
shared cluster. Staleness is made deterministic by pausing the standby's replay
(``pg_wal_replay_pause()``), never by a timed delay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.apps import client_for, create_key
from tests.support.pgservers import PgServers
from tests.support.problems import problem
from tests.support.replicas import (
    TOKEN,
    Cluster,
    caught_up,
    make_cluster,
    open_app,
    reads,
    replica_serving,
    served_by_replica,
)
from tests.support.servers import cli_create_key, start_server
from tests.support.stream import listening
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgresql_only


@pytest.fixture
async def cluster(pg_servers: PgServers) -> Cluster:
    return await make_cluster(pg_servers)


@pytest.fixture
async def app(cluster: Cluster) -> AsyncIterator[FastAPI]:
    application, lifespan = await open_app(cluster.url, cluster.replica_url)
    try:
        yield application
    finally:
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    key = await create_key(app, "replicas", ["write"])
    async with client_for(app, key) as client:
        yield client


async def test_a_token_reads_its_write_while_a_read_without_one_is_stale(
    app: FastAPI, http: httpx.AsyncClient, cluster: Cluster
) -> None:
    await wait_until(lambda: replica_serving(app))
    created = await http.post("/items", json={"sku": "R-1", "name": "Before", "price": 1})
    assert created.status_code == 201, created.text
    item: dict[str, Any] = created.json()
    first = created.headers[TOKEN]
    await caught_up(cluster)
    await asyncio.to_thread(cluster.standby.pause_replay)
    try:
        changed = await http.patch(f"/items/{item['id']}", json={"name": "After"})
        assert changed.status_code == 200, changed.text
        written = changed.headers[TOKEN]
        assert written > first  # tokens order as strings

        # Without a token: the replica answers, and it has not replayed the change.
        stale = await http.get(f"/items/{item['id']}")
        assert stale.json()["name"] == "Before"
        assert first <= stale.headers[TOKEN] < written
        assert reads(app).get(("replica", "no token"), 0) >= 1

        # With the write's token: the replica is behind it, so the primary answers.
        fresh = await http.get(f"/items/{item['id']}", headers={TOKEN: written})
        assert fresh.json()["name"] == "After"
        assert fresh.headers[TOKEN] >= written
        assert reads(app).get(("primary", "behind"), 0) == 1
        listed = await http.get("/items", headers={TOKEN: written})
        assert [row["name"] for row in listed.json()["data"]] == ["After"]
    finally:
        await asyncio.to_thread(cluster.standby.resume_replay)

    # Replayed: the same token's read comes from the replica now.
    await caught_up(cluster)
    replayed = await http.get(f"/items/{item['id']}", headers={TOKEN: written})
    assert replayed.json()["name"] == "After"
    assert reads(app).get(("replica", "caught up"), 0) >= 1
    assert reads(app).get(("primary", "behind"), 0) == 2  # the list above, and no more


async def test_a_token_that_is_not_one_is_400_and_the_answers_declare_the_header(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    body = problem(await http.get("/items", headers={TOKEN: "not-a-token"}), 400)
    assert body["type"].endswith("invalid-consistency-token")
    document = app.openapi()
    list_parameters = document["paths"]["/items"]["get"]["parameters"]
    assert any(p["name"] == TOKEN and p["in"] == "header" for p in list_parameters)
    created = document["paths"]["/items"]["post"]["responses"]["201"]
    assert TOKEN in created["headers"]


async def test_readyz_and_metrics_report_the_replica_without_failing_on_it(
    app: FastAPI, cluster: Cluster
) -> None:
    await wait_until(lambda: replica_serving(app))
    async with client_for(app) as client:
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ok"
        [replica] = ready["replicas"]
        assert replica["name"].endswith("/stockroom")
        assert replica["lag_seconds"] is not None

        await asyncio.to_thread(cluster.standby.stop)
        await wait_until(lambda: not_serving(client))
        ready = await client.get("/readyz")
        assert ready.status_code == 200  # the primary answers: still ready
        [replica] = ready.json()["replicas"]
        assert replica["reason"].startswith("unreachable")
        metrics = (await client.get("/metrics")).text
        assert "stockroom_db_replicas_excluded 1.0" in metrics


async def not_serving(client: httpx.AsyncClient) -> bool:
    replicas = (await client.get("/readyz")).json()["replicas"]
    return not replicas[0]["serving"]


async def test_reads_go_to_the_primary_while_the_replica_is_down_and_back_after(
    app: FastAPI, http: httpx.AsyncClient, cluster: Cluster
) -> None:
    await wait_until(lambda: replica_serving(app))
    created = (await http.post("/items", json={"sku": "D-1", "name": "Down", "price": 1})).json()
    await asyncio.to_thread(cluster.standby.stop)
    # Every read answers, from the primary, while the replica is away (never a 5xx).
    for _ in range(20):
        answer = await http.get(f"/items/{created['id']}")
        assert answer.status_code == 200, answer.text
    assert (
        reads(app).get(("primary", "no replica serving"), 0)
        + reads(app).get(("primary", "replica failed"), 0)
        >= 19
    )
    await asyncio.to_thread(cluster.standby.start)
    await wait_until(lambda: replica_serving(app))
    before = reads(app).get(("replica", "no token"), 0)
    assert (await http.get(f"/items/{created['id']}")).status_code == 200
    assert reads(app).get(("replica", "no token"), 0) == before + 1


async def test_a_token_of_another_history_reads_the_primary_and_is_never_an_error(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    await wait_until(lambda: replica_serving(app))
    created = await http.post("/items", json={"sku": "H-1", "name": "History", "price": 1})
    token = created.headers[TOKEN]
    # The same position on a timeline this cluster never had, and in another cluster.
    other_timeline = token[:16] + f"{int(token[16:24], 16) + 1:08x}" + token[24:]
    other_cluster = f"{int(token[:16], 16) ^ 1:016x}" + token[16:]
    for foreign in (other_timeline, other_cluster):
        before = reads(app).get(("primary", "token of another history"), 0)
        answer = await http.get(f"/items/{created.json()['id']}", headers={TOKEN: foreign})
        assert answer.status_code == 200, answer.text
        assert answer.json()["name"] == "History"
        assert reads(app).get(("primary", "token of another history"), 0) == before + 1
        # The answer's token is of this cluster's history (its system and timeline).
        assert answer.headers[TOKEN][:24] == token[:24]


async def test_the_export_reads_a_replica_and_goes_on_from_the_primary_when_it_stops(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A real `stockroom serve` (its answer streams): the export starts on the replica (a
    change it has not replayed is missing), then the standby stops part way; the rest comes
    from the primary after the last row sent: every item once, in order, a 200."""
    items = 60_000
    await asyncio.to_thread(
        cluster.primary.psql,
        "INSERT INTO items (sku, name, name_key, description, price_cents, quantity, version,"
        " created_at, updated_at) SELECT 'EXP-' || n, 'Exported ' || n, 'exported ' || n, '',"
        f" 100, 0, 1, now(), now() FROM generate_series(1, {items}) AS n",
        "stockroom",
    )
    await caught_up(cluster)
    env = {
        "STOCKROOM_DATABASE_REPLICA_URLS": cluster.replica_url,
        "STOCKROOM_DATABASE_REPLICA_CHECK_INTERVAL": "0.05",
    }
    server = await asyncio.to_thread(start_server, cluster.url, tmp_path, env_extra=env)
    try:
        key = await asyncio.to_thread(cli_create_key, cluster.url, tmp_path, "write")
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            await wait_until(lambda: served_by_replica(http))
            await asyncio.to_thread(cluster.standby.pause_replay)
            try:
                late = await http.post("/items", json={"sku": "LATE", "name": "Late", "price": 1})
                assert late.status_code == 201
                stale = (await http.get("/items/export", params={"format": "ndjson"})).text
                assert "LATE" not in stale  # the replica answered, behind the write
                fresh = await http.get(
                    "/items/export",
                    params={"format": "ndjson"},
                    headers={TOKEN: late.headers[TOKEN]},
                )
                assert "LATE" in fresh.text  # the primary answered: the replica was behind
            finally:
                await asyncio.to_thread(cluster.standby.resume_replay)
            await caught_up(cluster)

            body = bytearray()
            async with http.stream("GET", "/items/export", params={"format": "ndjson"}) as answer:
                assert answer.status_code == 200
                chunks = answer.aiter_raw()
                while len(body) < 1_000_000:
                    body += await anext(chunks)
                await asyncio.to_thread(cluster.standby.stop)  # part way through
                async for chunk in chunks:
                    body += chunk
            skus = [json.loads(line)["sku"] for line in body.decode().splitlines()]
            assert skus == [f"EXP-{n}" for n in range(1, items + 1)] + ["LATE"]
            metrics = (await http.get("/metrics")).text
            assert 'stockroom_db_reads_total{reason="replica failed",target="primary"}' in metrics
    finally:
        await asyncio.to_thread(server.stop)


async def test_the_streams_replay_reads_a_replica_and_the_primary_the_rest(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A client resuming the stream gets what it missed from a replica as far as the replica
    has replayed, and the rest from the primary: every event once, in log order, then live."""
    env = {
        "STOCKROOM_DATABASE_REPLICA_URLS": cluster.replica_url,
        "STOCKROOM_DATABASE_REPLICA_CHECK_INTERVAL": "0.05",
    }
    server = await asyncio.to_thread(start_server, cluster.url, tmp_path, env_extra=env)
    try:
        key = await asyncio.to_thread(cli_create_key, cluster.url, tmp_path, "write")
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            await wait_until(lambda: served_by_replica(http))
            async with listening(server.url, key) as first:
                for n in range(1, 11):
                    await post(http, f"S-{n}")
                await wait_until(lambda: len(first.messages) == 10)
            resume_after = first.messages[2].id  # the client saw 3 of them
            await caught_up(cluster)
            await asyncio.to_thread(cluster.standby.pause_replay)
            try:
                for n in range(11, 16):  # on the primary only
                    await post(http, f"S-{n}")
                before = await replays(http)
                async with listening(server.url, key, f"?after={resume_after}") as resumed:
                    await wait_until(lambda: len(resumed.messages) == 12)
                    await post(http, "S-16")  # live
                    await wait_until(lambda: len(resumed.messages) == 13)
                skus = [m.data["data"]["sku"] for m in resumed.messages]  # type: ignore[index]
                assert skus == [f"S-{n}" for n in range(4, 17)]
                assert len({m.id for m in resumed.messages}) == 13
                assert await replays(http) == before + 1
            finally:
                await asyncio.to_thread(cluster.standby.resume_replay)
    finally:
        await asyncio.to_thread(server.stop)


async def post(http: httpx.AsyncClient, sku: str) -> None:
    answer = await http.post("/items", json={"sku": sku, "name": sku, "price": 1})
    assert answer.status_code == 201, answer.text


async def replays(http: httpx.AsyncClient) -> int:
    metrics = (await http.get("/metrics")).text
    line = 'stockroom_db_reads_total{reason="stream replay",target="replica"} '
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return int(float(found[0].split()[-1])) if found else 0
