"""Reorder points over HTTP, on PostgreSQL and SQLite: the field, the `low_stock` filter,
the `stock.low` event (adjustments, PATCH, imports) and GET /items/summary."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.apps import client_for, create_key
from tests.support.event_log import logged
from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: see tests/conftest.py.
pytestmark = pytest.mark.pgbouncer

CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}


async def _item(client: httpx.AsyncClient, item_id: int) -> dict[str, Any]:
    response = await client.get(f"/items/{item_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _events_since(app: FastAPI, before: int) -> list[dict[str, Any]]:
    return (await logged(app))[before:]


async def _adjust(client: httpx.AsyncClient, item_id: int, delta: int) -> None:
    response = await client.post(f"/items/{item_id}/adjustments", json={"delta": delta})
    assert response.status_code == 201, response.text


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


# --- the field ---------------------------------------------------------------------------


async def test_reorder_point_is_null_by_default_and_in_every_item_body(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    plain = await new_item(quantity=4)
    assert plain["reorder_point"] is None
    assert list(plain)[-1] == "reorder_point"  # the last field, as in the export's columns
    watched = await new_item(quantity=4, reorder_point=10)
    assert watched["reorder_point"] == 10
    assert (await _item(client, watched["id"]))["reorder_point"] == 10
    listed = (await client.get("/items")).json()["data"]
    assert [item["reorder_point"] for item in listed] == [None, 10]


async def test_patch_sets_changes_and_clears_the_reorder_point(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=20)
    path = f"/items/{item['id']}"
    response = await client.patch(path, json={"reorder_point": 5})
    assert response.status_code == 200, response.text
    assert response.json()["reorder_point"] == 5
    assert response.json()["version"] == 2
    # The same value again changes nothing (no new version).
    same = await client.patch(path, json={"reorder_point": 5})
    assert same.json()["version"] == 2
    lowered = await client.patch(path, json={"reorder_point": 0})
    assert lowered.json()["reorder_point"] == 0
    # Another field's PATCH leaves it as it is; null clears it.
    renamed = await client.patch(path, json={"name": "Renamed"})
    assert renamed.json()["reorder_point"] == 0
    cleared = await client.patch(path, json={"reorder_point": None})
    assert cleared.status_code == 200
    assert cleared.json()["reorder_point"] is None
    assert (await _item(client, item["id"]))["reorder_point"] is None


@pytest.mark.parametrize("value", [-1, "3", 3.5, True, 2_147_483_648, "low"])
async def test_a_bad_reorder_point_is_422_and_changes_nothing(
    client: httpx.AsyncClient, new_item: ItemFactory, value: object
) -> None:
    created = await client.post(
        "/items", json={"sku": "RP-BAD", "name": "bad", "price": 1, "reorder_point": value}
    )
    body = problem(created, 422)
    assert ["body", "reorder_point"] in [e["loc"][:2] for e in body["errors"]]
    item = await new_item(reorder_point=2)
    patched = await client.patch(f"/items/{item['id']}", json={"reorder_point": value})
    body = problem(patched, 422)
    assert ["body", "reorder_point"] in [e["loc"][:2] for e in body["errors"]]
    assert await _item(client, item["id"]) == item
    assert [i["sku"] for i in (await client.get("/items")).json()["data"]] == [item["sku"]]


# --- the low_stock filter ---------------------------------------------------------------------


async def test_low_stock_lists_walk_in_pages(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    # (quantity, reorder point): low when the quantity is at or below it.
    made = {
        "BELOW": (3, 5),
        "NONE-EMPTY": (0, None),
        "EQUAL": (5, 5),
        "ABOVE": (6, 5),
        "ZERO-ZERO": (0, 0),
        "NONE": (7, None),
        "ZERO-ONE": (0, 1),
    }
    for sku, (quantity, reorder_point) in made.items():
        await new_item(sku=sku, quantity=quantity, reorder_point=reorder_point)

    async def walk(**params: str | int) -> tuple[list[str], int]:
        skus: list[str] = []
        cursor: str | None = None
        total = -1
        while True:
            query: dict[str, str | int] = {**params, "limit": 2, "count": "true"}
            if cursor is not None:
                query["cursor"] = cursor
            response = await client.get("/items", params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["data"]) <= 2
            skus += [item["sku"] for item in page["data"]]
            total = page["total"]
            cursor = page["next_cursor"]
            if cursor is None:
                return skus, total

    low = ["BELOW", "EQUAL", "ZERO-ZERO", "ZERO-ONE"]
    assert await walk(low_stock="true") == (low, 4)
    assert await walk(low_stock="false") == (["NONE-EMPTY", "ABOVE", "NONE"], 3)
    assert await walk(low_stock="true", sort="-id") == (low[::-1], 4)
    assert await walk(low_stock="true", in_stock="true") == (["BELOW", "EQUAL"], 2)
    assert await walk(low_stock="false", in_stock="false") == (["NONE-EMPTY"], 1)
    assert (await walk())[1] == len(made)
    problem(await client.get("/items", params={"low_stock": "maybe"}), 422)


async def test_the_export_takes_the_low_stock_filter(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="LOW", quantity=1, reorder_point=2)
    await new_item(sku="FINE", quantity=9, reorder_point=2)
    await new_item(sku="UNWATCHED", quantity=0)
    for fmt in ("csv", "ndjson"):
        response = await client.get("/items/export", params={"format": fmt, "low_stock": "true"})
        assert response.status_code == 200
        assert "LOW" in response.text, fmt
        assert "FINE" not in response.text, fmt
        response = await client.get("/items/export", params={"format": fmt, "low_stock": "false"})
        assert "LOW" not in response.text, fmt
        assert "FINE" in response.text, fmt
        assert "UNWATCHED" in response.text, fmt


# --- the stock.low event ----------------------------------------------------------------------


async def test_an_adjustment_that_crosses_the_reorder_point_emits_stock_low_once(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=10, reorder_point=5)
    item_id = item["id"]
    before = len(await logged(app))
    await _adjust(client, item_id, -4)  # 6: still above
    await _adjust(client, item_id, -1)  # 5: at the reorder point, low
    at_point = await _item(client, item_id)
    await _adjust(client, item_id, -2)  # 3: already low
    await _adjust(client, item_id, 1)  # 4: still low
    events = await _events_since(app, before)
    assert _types(events) == ["stock.adjusted"] * 2 + ["stock.low"] + ["stock.adjusted"] * 2
    low = events[2]
    assert low["data"] == at_point  # the item after the change, as the API answers it
    assert low["created_at"] == at_point["updated_at"]
    assert events[1]["data"]["quantity_after"] == 5  # right after its own change

    # Back above it, then down again: a new crossing, a new event.
    before = len(await logged(app))
    await _adjust(client, item_id, 10)  # 14
    await _adjust(client, item_id, -14)  # 0
    events = await _events_since(app, before)
    assert _types(events) == ["stock.adjusted", "stock.adjusted", "stock.low"]
    assert events[2]["data"] == await _item(client, item_id)


async def test_no_stock_low_without_a_reorder_point_or_on_creation(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    before = len(await logged(app))
    unwatched = await new_item(quantity=3)
    born_low = await new_item(quantity=2, reorder_point=5)
    born_empty = await new_item(reorder_point=0)
    await _adjust(client, unwatched["id"], -3)
    await _adjust(client, born_low["id"], -1)
    await _adjust(client, born_empty["id"], 1)  # above 0: not low
    events = await _events_since(app, before)
    assert "stock.low" not in _types(events)


async def test_a_patch_that_sets_or_raises_the_reorder_point_to_the_stock_emits_stock_low(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=3)
    path = f"/items/{item['id']}"

    async def patch(body: dict[str, Any]) -> list[str]:
        before = len(await logged(app))
        response = await client.patch(path, json=body)
        assert response.status_code == 200, response.text
        events = await _events_since(app, before)
        if "stock.low" in _types(events):
            assert events[-1]["data"] == response.json()
        return _types(events)

    assert await patch({"reorder_point": 2}) == ["item.updated"]  # 3 is above 2
    assert await patch({"reorder_point": 3}) == ["item.updated", "stock.low"]  # raised to 3
    assert await patch({"reorder_point": 8}) == ["item.updated"]  # already low
    assert await patch({"reorder_point": None}) == ["item.updated"]  # cleared: not low
    assert await patch({"reorder_point": 10, "name": "Watched"}) == ["item.updated", "stock.low"]
    assert await patch({"name": "Renamed"}) == ["item.updated"]
    assert await patch({"reorder_point": 10}) == []  # nothing changed


async def test_an_import_emits_stock_low_for_the_items_it_takes_to_their_reorder_point(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    dropping = await new_item(sku="DROP", name="Item", quantity=10, reorder_point=5)
    watched = await new_item(sku="WATCH", name="Item", quantity=4)
    already = await new_item(sku="ALREADY", name="Item", quantity=2, reorder_point=5)
    cleared = await new_item(sku="CLEAR", name="Item", quantity=10, reorder_point=5)
    steady = await new_item(sku="STEADY", name="Item", quantity=10, reorder_point=5)
    before = len(await logged(app))
    body = (
        "sku,name,description,price,quantity,reorder_point\n"
        "DROP,Item,,10.00,5,5\n"  # 10 -> 5: crosses
        "WATCH,Item,,10.00,,4\n"  # a reorder point at its stock: crosses
        "ALREADY,Item,,10.00,1,5\n"  # lower still: was low already
        "CLEAR,Item,,10.00,1,\n"  # an empty cell clears it: not low
        "STEADY,Item,,10.00,9,5\n"  # still above
        "NEW-LOW,New,,1.00,0,3\n"  # created low: no event on creation
    )
    response = await client.post("/items/import", content=body, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1
    assert response.json()["failed"] == 0
    events = await _events_since(app, before)
    low = [event for event in events if event["type"] == "stock.low"]
    assert sorted(event["data"]["sku"] for event in low) == ["DROP", "WATCH"]
    for event in low:
        current = await _item(client, event["data"]["id"])
        assert event["data"] == current
        assert event["created_at"] == current["updated_at"]
        # After the item's own events in the log.
        own = [
            n
            for n, other in enumerate(events)
            if other["type"] != "stock.low"
            and current["id"] == other["data"].get("item_id", other["data"]["id"])
        ]
        assert own
        assert max(own) < events.index(event)
    assert (await _item(client, cleared["id"]))["reorder_point"] is None
    assert (await _item(client, watched["id"]))["reorder_point"] == 4
    assert (await _item(client, dropping["id"]))["quantity"] == 5
    assert (await _item(client, already["id"]))["quantity"] == 1
    assert (await _item(client, steady["id"]))["quantity"] == 9
    updated = sorted(e["data"]["sku"] for e in events if e["type"] == "item.updated")
    assert updated == ["CLEAR", "WATCH"]  # the reorder point is a field of the item


async def test_an_import_without_the_column_or_key_leaves_reorder_points_as_they_are(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    kept = await new_item(sku="KEEP", name="Item", quantity=10, reorder_point=5)
    nulled = await new_item(sku="NULL", name="Item", quantity=10, reorder_point=5)
    response = await client.post(
        "/items/import", content="sku,name,price,quantity\nKEEP,Item,10.00,4\n", headers=CSV
    )
    assert response.json()["updated"] == 1
    after = await _item(client, kept["id"])
    assert (after["quantity"], after["reorder_point"]) == (4, 5)
    lines = (
        b'{"sku": "KEEP", "name": "Item", "price": "10.00", "quantity": 9}\n'
        b'{"sku": "NULL", "name": "Item", "price": "10.00", "reorder_point": null}\n'
        b'{"sku": "NDJ", "name": "New", "price": "1.00", "quantity": 1, "reorder_point": 1}\n'
    )
    before = len(await logged(app))
    response = await client.post("/items/import", content=lines, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["updated"]) == (1, 2)
    assert (await _item(client, kept["id"]))["reorder_point"] == 5
    assert (await _item(client, nulled["id"]))["reorder_point"] is None
    listed = (await client.get("/items", params={"low_stock": "true"})).json()["data"]
    assert [item["sku"] for item in listed] == ["NDJ"]
    assert "stock.low" not in _types(await _events_since(app, before))


async def test_an_import_refuses_a_bad_reorder_point_by_line(client: httpx.AsyncClient) -> None:
    body = (
        "sku,name,price,reorder_point\n"
        "OK,Fine,1.00,3\n"
        "NEG,Negative,1.00,-1\n"
        "TXT,Text,1.00,many\n"
        "DEC,Decimal,1.00,1.5\n"
    )
    response = await client.post("/items/import", content=body, headers=CSV)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["created"], report["failed"]) == (1, 3)
    assert [error["line"] for error in report["errors"]] == [3, 4, 5]
    assert all("reorder_point" in error["message"] for error in report["errors"])


# --- export and import again ------------------------------------------------------------------


async def test_an_export_imported_again_reproduces_the_reorder_points(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    with_point = await new_item(sku="RT-SET", quantity=3, reorder_point=7)
    without = await new_item(sku="RT-NONE", quantity=3)
    exported = await client.get("/items/export")
    rows = list(csv.reader(io.StringIO(exported.text, newline="")))
    assert rows[0][-1] == "reorder_point"  # the last column; the others keep their places
    assert rows[0][:9] == [
        "id", "sku", "name", "description", "price", "quantity", "version",
        "created_at", "updated_at",
    ]  # fmt: skip
    assert [row[-1] for row in rows[1:]] == ["7", ""]
    ndjson = (await client.get("/items/export", params={"format": "ndjson"})).content

    # Change both, then import each export back: the reorder points are as exported.
    for body, headers in ((exported.content, CSV), (ndjson, NDJSON)):
        await client.patch(f"/items/{with_point['id']}", json={"reorder_point": None})
        await client.patch(f"/items/{without['id']}", json={"reorder_point": 1})
        response = await client.post("/items/import", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["updated"] == 2
        assert (await _item(client, with_point["id"]))["reorder_point"] == 7
        assert (await _item(client, without["id"]))["reorder_point"] is None


# --- the stream and webhooks know the type --------------------------------------------------


async def test_the_stream_filters_on_stock_low(client: httpx.AsyncClient) -> None:
    response = await client.head("/events", params={"types": "stock.low,stock.adjusted"})
    assert response.status_code == 200
    problem(await client.get("/events", params={"types": "stock.lowest"}), 422)


# --- GET /items/summary -----------------------------------------------------------------------


async def test_summary_of_an_empty_catalogue(client: httpx.AsyncClient) -> None:
    response = await client.get("/items/summary")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "items": 0, "units": 0, "value": "0.00", "out_of_stock": 0, "low_stock": 0,
    }  # fmt: skip


async def test_summary_counts_the_items_made(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(price="10.05", quantity=3)  # 30.15
    await new_item(price="0.99", quantity=0)  # out of stock
    await new_item(price="1234567.89", quantity=7, reorder_point=10)  # 8641975.23, low
    await new_item(price="0.01", quantity=0, reorder_point=0)  # out of stock and low
    await new_item(price="0.07", quantity=11, reorder_point=11)  # 0.77, low
    response = await client.get("/items/summary")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "items": 5,
        "units": 21,
        "value": "8642006.15",
        "out_of_stock": 2,
        "low_stock": 3,
    }


async def test_summary_value_is_exact_for_the_largest_amounts(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    for _ in range(3):
        await new_item(price="9999999999.99", quantity=2_147_483_647)
    summary = (await client.get("/items/summary")).json()
    assert summary["units"] == 3 * 2_147_483_647
    cents = 3 * 999_999_999_999 * 2_147_483_647  # beyond 64 bits: no rounding, no overflow
    assert summary["value"] == f"{cents // 100}.{cents % 100:02d}"


async def test_summary_route_answers_head_and_refuses_other_methods(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(quantity=1)
    got = await client.get("/items/summary")
    head = await client.head("/items/summary")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    for method in ("PATCH", "DELETE", "POST", "PUT"):
        body = problem(await client.request(method, "/items/summary", json={}), 405)
        assert body["type"].endswith("method-not-allowed")
    allow = (await client.delete("/items/summary")).headers["allow"]
    assert {part.strip() for part in allow.split(",")} == {"GET", "HEAD"}
    # The read scope is enough; no key is not.
    key = await create_key(app, f"summary-reader-{uuid.uuid4().hex[:8]}", ["read"])
    async with client_for(app, key) as reader:
        assert (await reader.get("/items/summary")).json()["items"] == 1
    async with client_for(app) as stranger:
        problem(await stranger.get("/items/summary"), 401)
