"""The event log as an outbox: one event per change, in the change's transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from stockroom.events.log import START, prune, read_after
from stockroom.items.schemas import ItemCreate
from tests.support.event_log import logged
from tests.support.items import ItemFactory
from tests.support.waiting import wait_until

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_every_change_writes_its_event_with_the_api_representation(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=5)
    patched = (await client.patch(f"/items/{item['id']}", json={"name": "Renamed"})).json()
    adjusted = (await client.post(f"/items/{item['id']}/adjustments", json={"delta": -5})).json()
    assert (await client.delete(f"/items/{item['id']}")).status_code == 204

    events = await logged(app)
    assert types_of(events) == [
        "item.created",
        "stock.adjusted",  # the starting quantity's ledger row
        "item.updated",
        "stock.adjusted",
        "item.deleted",
    ]
    for event in events:
        assert set(event) == {"id", "type", "created_at", "data"}
        uuid.UUID(event["id"])
        assert RFC3339_UTC.match(event["created_at"]), event["created_at"]
    created, initial, updated, adjustment, deleted = (e["data"] for e in events)
    assert created == item  # the same JSON as the API's answer
    assert (initial["reason"], initial["delta"]) == ("initial", 5)
    assert updated == patched
    assert adjustment == adjusted
    assert deleted == {"id": item["id"], "sku": item["sku"]}
    assert len({e["id"] for e in events}) == len(events)


async def test_changes_that_do_not_happen_write_no_event(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=1)
    before = await logged(app)
    # A PATCH that changes nothing, a refused adjustment, a duplicate sku, a refused
    # delete (stock not zero), a stale If-Match: nothing changes, so nothing is logged.
    assert (await client.patch(f"/items/{item['id']}", json={"name": item["name"]})).is_success
    assert (
        await client.post(f"/items/{item['id']}/adjustments", json={"delta": -2})
    ).status_code == 409
    assert (
        await client.post("/items", json={"sku": item["sku"], "name": "x", "price": 1})
    ).status_code == 409
    assert (await client.delete(f"/items/{item['id']}")).status_code == 409
    stale = await client.patch(
        f"/items/{item['id']}", json={"name": "y"}, headers={"If-Match": '"0-0"'}
    )
    assert stale.status_code == 412
    assert await logged(app) == before  # fmt: skip


async def test_a_rolled_back_change_leaves_no_event(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    class AbortError(Exception):
        pass

    stores = app.state.resources.stores

    async def create_then_fail() -> None:
        async with stores.database.transaction() as connection:
            await stores.writer.create(
                connection, ItemCreate(sku="ROLLBACK-1", name="Never", price=1, quantity=3)
            )
            raise AbortError  # after the item, its ledger row and its events were written

    with pytest.raises(AbortError):
        await create_then_fail()
    assert await logged(app) == []
    assert (await client.get("/items")).json()["data"] == []


@pytest.mark.postgresql_only
async def test_readers_never_skip_an_event_that_commits_late(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """seq order is not commit order: T1 takes seq 1, T2 takes seq 2 and commits first.
    A reader following the log must not move past seq 2 while seq 1 may still commit, and
    must then see both, each once. (``client``: the tables are emptied afterwards.)"""
    engine = app.state.resources.engine
    seen: list[int] = []
    position = START

    async def follow() -> None:
        nonlocal position
        async with engine.connect() as reader:
            for event in await read_after(reader, position, limit=100):
                seen.append(event.position.seq)
                position = event.position

    async def follow_until(count: int) -> bool:
        await follow()
        return len(seen) >= count

    async def insert_event(connection: AsyncConnection, name: str) -> int:
        seq = await connection.scalar(
            text(
                "INSERT INTO events (id, type, body, created_at) "
                "VALUES (:id, 'item.updated', '{}', now()) RETURNING seq"
            ),
            {"id": str(uuid.uuid4())},
        )
        return int(seq)

    async with engine.connect() as t1, engine.connect() as t2:
        await t1.begin()
        await t2.begin()
        first = await insert_event(t1, "t1")
        second = await insert_event(t2, "t2")
        assert first < second
        await t2.commit()
        await follow()
        assert seen == []  # seq 2 is committed, but seq 1 might still come: hold back
        await t1.commit()
    # (Another database's transaction on the same server may hold the horizon back a while.)
    await wait_until(lambda: follow_until(2))
    assert seen == [first, second]

    # The other interleaving: the transaction that started writing later takes the lower
    # seq and commits first; the earlier one commits after. Again nothing is lost.
    async with engine.connect() as t1, engine.connect() as t2:
        await t1.begin()
        await t2.begin()
        await t1.execute(text("SELECT pg_current_xact_id()"))  # t1 is the older transaction
        third = await insert_event(t2, "t2")
        fourth = await insert_event(t1, "t1")
        await t2.commit()
        await follow()
        await t1.commit()
    await wait_until(lambda: follow_until(4))
    assert sorted(seen) == [first, second, third, fourth]
    assert len(seen) == len(set(seen))


async def test_concurrent_writers_each_get_their_event_once(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=0)
    deltas = [1] * 30

    async def add(delta: int) -> int:
        response = await client.post(f"/items/{item['id']}/adjustments", json={"delta": delta})
        return response.status_code

    assert set(await asyncio.gather(*(add(d) for d in deltas))) == {201}
    stock = [e for e in await logged(app) if e["type"] == "stock.adjusted"]
    ledger = (await client.get(f"/items/{item['id']}/adjustments?limit=100")).json()["data"]
    assert sorted(e["data"]["id"] for e in stock) == sorted(a["id"] for a in ledger)
    assert sorted(e["data"]["quantity_after"] for e in stock) == list(range(1, 31))


async def test_imports_write_the_same_events_as_the_api(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    renamed = await new_item(sku="IMP-RENAME", name="Old name", quantity=2)
    restocked = await new_item(sku="IMP-STOCK", name="Same", price="3.00", quantity=2)
    same = await new_item(sku="IMP-SAME", name="Same", price="3.00", quantity=1)
    before = len(await logged(app))
    csv = (
        "sku,name,description,price,quantity\n"
        "IMP-NEW,Brand new,,1.50,7\n"
        "IMP-EMPTY,No stock,,2.00,0\n"
        "IMP-RENAME,New name,,10.00,2\n"
        "IMP-STOCK,Same,,3.00,9\n"
        "IMP-SAME,Same,,3.00,1\n"
    )
    imported = await client.post("/items/import", content=csv, headers={"content-type": "text/csv"})
    assert imported.json()["created"] == 2
    events = (await logged(app))[before:]

    async def current(sku: str) -> dict[str, Any]:
        listed = (await client.get("/items", params={"limit": 100})).json()["data"]
        return next(i for i in listed if i["sku"] == sku)

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event["data"])
    assert sorted(i["sku"] for i in by_type["item.created"]) == ["IMP-EMPTY", "IMP-NEW"]
    for data in by_type["item.created"]:
        assert data == await current(data["sku"])  # the API's representation, exactly
    # Only the rename changed a field; the restock changed only the quantity (a ledger row).
    assert by_type["item.updated"] == [await current("IMP-RENAME")]
    stock = by_type["stock.adjusted"]
    assert sorted((a["item_id"], a["delta"], a["reason"]) for a in stock) == sorted(
        [
            ((await current("IMP-NEW"))["id"], 7, "import"),
            (restocked["id"], 7, "import"),
        ]
    )
    for adjustment in stock:
        ledger = await client.get(f"/items/{adjustment['item_id']}/adjustments")
        assert adjustment in ledger.json()["data"]
    assert renamed["id"] not in [a["item_id"] for a in stock]
    assert same["id"] not in [e["id"] for e in by_type["item.updated"]]
    for event in events:
        assert RFC3339_UTC.match(event["created_at"])
        assert RFC3339_UTC.match(event["data"]["created_at"])

    # An atomic import refused for a bad row writes no event.
    before = len(await logged(app))
    bad = "sku,name,price,quantity\nIMP-A,A,1.00,1\nIMP-B,B,-1,1\n"
    refused = await client.post(
        "/items/import",
        content=bad,
        headers={"content-type": "text/csv"},
        params={"mode": "atomic"},
    )
    assert refused.status_code == 422
    assert len(await logged(app)) == before


async def test_old_events_are_pruned_with_their_deliveries(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item()
    await new_item()
    hook = await client.post("/webhooks", json={"url": "https://93.184.216.34/", "events": ["*"]})
    assert hook.status_code == 201
    async with app.state.resources.engine.begin() as connection:
        # The first event is 8 days old and has a delivery; the second is recent.
        first = await connection.scalar(text("SELECT min(seq) FROM events"))
        await connection.execute(
            text("UPDATE events SET created_at = :old WHERE seq = :seq"),
            {"old": dt.datetime.now(dt.UTC) - dt.timedelta(days=8), "seq": first},
        )
        await connection.execute(
            text(
                "INSERT INTO webhook_deliveries (webhook_id, event_seq, status, attempts, "
                "next_attempt_at, created_at) VALUES (:w, :seq, 'pending', 0, :now, :now)"
            ),
            {"w": hook.json()["id"], "seq": first, "now": dt.datetime.now(dt.UTC)},
        )
    async with app.state.resources.sessions() as session:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
        assert await prune(session, cutoff) == 1
        assert await prune(session, cutoff) == 0
    async with app.state.resources.engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM events")) == 1
        assert await connection.scalar(text("SELECT count(*) FROM webhook_deliveries")) == 0
