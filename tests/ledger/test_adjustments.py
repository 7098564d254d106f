"""The ledger over HTTP: adjustments change stock, and the ledger always explains it."""

from __future__ import annotations

import httpx
import pytest

from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: see tests/conftest.py.
pytestmark = pytest.mark.pgbouncer


async def ledger(client: httpx.AsyncClient, item_id: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/items/{item_id}/adjustments", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        rows.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


async def test_create_with_quantity_writes_an_initial_adjustment(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=7)
    rows = await ledger(client, item["id"])
    assert len(rows) == 1
    assert rows[0]["delta"] == 7
    assert rows[0]["reason"] == "initial"
    assert rows[0]["quantity_after"] == 7
    assert rows[0]["item_id"] == item["id"]
    assert item["version"] == 1


async def test_create_without_quantity_has_an_empty_ledger(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item()
    assert await ledger(client, item["id"]) == []


async def test_adjustments_change_stock_and_version(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=5)
    url = f"/items/{item['id']}/adjustments"
    response = await client.post(url, json={"delta": 3, "reason": "delivery"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "item_id", "delta", "reason", "quantity_after", "created_at"}
    assert body["delta"] == 3
    assert body["reason"] == "delivery"
    assert body["quantity_after"] == 8
    removed = (await client.post(url, json={"delta": -8})).json()
    assert removed["quantity_after"] == 0
    assert removed["reason"] is None

    current = (await client.get(f"/items/{item['id']}")).json()
    assert current["quantity"] == 0
    assert current["version"] == 3
    rows = await ledger(client, item["id"])
    assert [r["delta"] for r in rows] == [-8, 3, 5]  # newest first
    assert sum(int(str(r["delta"])) for r in rows) == current["quantity"]


async def test_overselling_is_409_and_changes_nothing(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=2)
    body = problem(await client.post(f"/items/{item['id']}/adjustments", json={"delta": -3}), 409)
    assert body["type"].endswith("insufficient-stock")
    assert body["available"] == 2
    assert body["delta"] == -3
    after = (await client.get(f"/items/{item['id']}")).json()
    assert after["quantity"] == 2
    assert after["version"] == 1
    assert len(await ledger(client, item["id"])) == 1


async def test_quantity_cannot_pass_its_maximum(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=2_147_483_000)
    body = problem(
        await client.post(f"/items/{item['id']}/adjustments", json={"delta": 1_000_000}), 409
    )
    assert body["type"].endswith("quantity-limit")
    assert (await client.get(f"/items/{item['id']}")).json()["quantity"] == 2_147_483_000


@pytest.mark.parametrize(
    "body",
    [
        {"delta": 0},
        {"delta": 1_000_000_001},
        {"delta": -1_000_000_001},
        {"delta": 1.5},
        {"delta": "3"},
        {},
        {"delta": 1, "reason": "x" * 201},
        {"delta": 1, "reason": "a\x00b"},
        {"delta": 1, "extra": True},
    ],
)
async def test_bad_adjustment_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory, body: dict[str, object]
) -> None:
    item = await new_item(quantity=1)
    problem(await client.post(f"/items/{item['id']}/adjustments", json=body), 422)
    assert (await client.get(f"/items/{item['id']}")).json()["version"] == 1


async def test_adjusting_or_listing_a_missing_item_is_404(client: httpx.AsyncClient) -> None:
    problem(await client.post("/items/4242/adjustments", json={"delta": 1}), 404)
    problem(await client.get("/items/4242/adjustments"), 404)


async def test_invalid_ledger_cursor_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=1)
    response = await client.get(f"/items/{item['id']}/adjustments", params={"cursor": "bogus"})
    problem(response, 422)


async def test_delete_is_refused_while_in_stock(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=4)
    body = problem(await client.delete(f"/items/{item['id']}"), 409)
    assert body["type"].endswith("stock-not-zero")
    assert body["quantity"] == 4
    assert (await client.get(f"/items/{item['id']}")).status_code == 200

    await client.post(f"/items/{item['id']}/adjustments", json={"delta": -4, "reason": "sold"})
    assert (await client.delete(f"/items/{item['id']}")).status_code == 204
    problem(await client.get(f"/items/{item['id']}/adjustments"), 404)
