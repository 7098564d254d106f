"""`count=true` (exact up to 1,000 matches and for the stock filters; above that an estimate
on PostgreSQL, said so by `total_exact`), `count=exact`, and the catalogue's totals that
PostgreSQL's triggers keep (migration 0008) as every kind of write changes the items: the
summary and the counts must equal what the items themselves add up to."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.items import ItemFactory

# Also through PgBouncer: the custom plans' SET LOCAL and the sample run in transaction mode.
pytestmark = pytest.mark.pgbouncer

CSV = {"content-type": "text/csv"}


async def _import(client: httpx.AsyncClient, rows: list[str]) -> None:
    body = "sku,name,description,price,quantity,reorder_point\n" + "\n".join(rows) + "\n"
    response = await client.post("/items/import", content=body, headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["failed"] == 0, response.text


async def _every_item(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/items", params=params)).json()
        items += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _added_up(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary as the items' own fields add up."""
    value = sum(Decimal(item["price"]) * item["quantity"] for item in items)
    low = [
        i for i in items if i["reorder_point"] is not None and i["quantity"] <= i["reorder_point"]
    ]
    return {
        "items": len(items),
        "units": sum(item["quantity"] for item in items),
        "value": f"{value:.2f}",
        "out_of_stock": sum(1 for item in items if item["quantity"] == 0),
        "low_stock": len(low),
    }


async def _summary(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/items/summary")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _total(client: httpx.AsyncClient, **params: Any) -> tuple[int, bool]:
    response = await client.get("/items", params={"limit": 1, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["total"], body["total_exact"]


async def test_count_is_exact_up_to_a_thousand_matches_and_estimated_above(
    client: httpx.AsyncClient, backend: str
) -> None:
    # 1,500 red chairs, quantity 0-4 (a fifth out of stock), reorder point 2 (three fifths
    # low); 300 blue lamps, 5 each, no reorder point.
    rows = [f"RED-{n},Red chair {n},,1.00,{n % 5},2" for n in range(1500)]
    rows += [f"BLUE-{n},Blue lamp {n},,2.50,5," for n in range(300)]
    await _import(client, rows)

    assert await _total(client, count="true", q="blue") == (300, True)
    assert await _total(client, count="true", q="blue", in_stock="true") == (300, True)
    # The stock filters alone: from the totals, exact whatever the number.
    assert await _total(client, count="true") == (1800, True)
    assert await _total(client, count="true", in_stock="false") == (300, True)
    assert await _total(client, count="true", in_stock="true") == (1500, True)
    assert await _total(client, count="true", low_stock="true") == (900, True)
    assert await _total(client, count="true", low_stock="false") == (900, True)
    # Both stock filters: counted (300, under the cap).
    assert await _total(client, count="true", in_stock="false", low_stock="true") == (300, True)
    # More than 1,000 matches of `q`: PostgreSQL estimates (from a sample that is the whole
    # of a table this small, so the estimate is the number itself); SQLite counts.
    assert await _total(client, count="true", q="red") == (1500, backend == "sqlite")
    assert await _total(client, count="true", q="chair", in_stock="true") == (
        1200,
        backend == "sqlite",
    )
    # count=exact: every match counted, on both databases.
    assert await _total(client, count="exact", q="red") == (1500, True)
    assert await _total(client, count="exact", q="chair", in_stock="true") == (1200, True)
    assert await _total(client, count="exact") == (1800, True)
    # Without count: neither field.
    body = (await client.get("/items", params={"q": "red", "limit": 1})).json()
    assert "total" not in body
    assert "total_exact" not in body


async def test_a_bad_count_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/items", params={"count": "roughly"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_summary_and_counts_follow_every_kind_of_write(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    made = [
        await new_item(price=f"{n}.{n:02d}", quantity=n % 4, reorder_point=(n % 3 or None))
        for n in range(1, 13)
    ]
    assert await _summary(client) == _added_up(await _every_item(client))
    # Adjustments up and down, to and from zero.
    for item in made[:6]:
        response = await client.post(
            f"/items/{item['id']}/adjustments", json={"delta": 5, "reason": "delivery"}
        )
        assert response.status_code == 201, response.text
    response = await client.post(
        f"/items/{made[0]['id']}/adjustments", json={"delta": -(made[0]["quantity"] + 5)}
    )
    assert response.status_code == 201, response.text
    # Changes of price and reorder point (the value, low stock), and of the name only.
    for item, change in zip(
        made[6:9],
        [{"price": "999.99"}, {"reorder_point": 100}, {"name": "Renamed"}],
        strict=True,
    ):
        current = (await client.get(f"/items/{item['id']}")).json()
        response = await client.patch(
            f"/items/{item['id']}",
            json=change,
            headers={"If-Match": f'"{item["id"]}-{current["version"]}"'},
        )
        assert response.status_code == 200, response.text
    # A deletion (at zero stock) and an import that creates some and changes others.
    zero = next(i for i in await _every_item(client) if i["quantity"] == 0)
    current = (await client.get(f"/items/{zero['id']}")).json()
    response = await client.delete(
        f"/items/{zero['id']}", headers={"If-Match": f'"{zero["id"]}-{current["version"]}"'}
    )
    assert response.status_code == 204, response.text
    await _import(
        client,
        [f"{made[9]['sku']},Imported,,7.77,0,", f"{made[10]['sku']},Imported,,0.10,40,50"]
        + [f"NEW-{n},New,,3.33,{n},1" for n in range(5)],
    )
    items = await _every_item(client)
    assert await _summary(client) == _added_up(items)
    # Folded into one row (the server's background work does it every few seconds): the same.
    await app.state.resources.stores.items.fold_totals()
    assert await _summary(client) == _added_up(items)
    assert await _total(client, count="true") == (len(items), True)
    out = sum(1 for item in items if item["quantity"] == 0)
    assert await _total(client, count="true", in_stock="false") == (out, True)


async def test_totals_stay_exact_under_concurrent_writes_and_folds(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    made = [await new_item(quantity=20, reorder_point=10) for _ in range(8)]
    rng = random.Random(25)
    store = app.state.resources.stores.items

    async def adjust() -> None:
        for _ in range(15):
            item = rng.choice(made)
            response = await client.post(
                f"/items/{item['id']}/adjustments", json={"delta": rng.choice([-3, -1, 2, 4])}
            )
            # 409: it would take the stock below zero; nothing changed.
            assert response.status_code in (201, 409), response.text

    async def fold() -> None:
        for _ in range(10):
            await store.fold_totals()
            await asyncio.sleep(0)

    await asyncio.gather(*(adjust() for _ in range(6)), fold(), fold())
    assert await _summary(client) == _added_up(await _every_item(client))
