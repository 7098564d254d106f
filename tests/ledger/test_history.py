"""An item's quantity over time (`GET /items/{id}/history`): the ledger's `quantity_after` as
two columns, oldest first, in one answer, with older parts by cursor."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from tests.ledger.test_adjustments import ledger
from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: see tests/conftest.py.
pytestmark = pytest.mark.pgbouncer


async def test_history_is_the_ledger_as_columns_oldest_first(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=5)
    url = f"/items/{item['id']}/adjustments"
    for delta in (3, -6, 10):
        assert (await client.post(url, json={"delta": delta})).status_code == 201

    response = await client.get(f"/items/{item['id']}/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"times", "quantities", "last_id", "next_cursor"}
    rows = list(reversed(await ledger(client, item["id"])))  # oldest first
    assert body["quantities"] == [row["quantity_after"] for row in rows] == [5, 8, 2, 12]
    times = [dt.datetime.fromisoformat(str(row["created_at"])).timestamp() for row in rows]
    assert body["times"] == pytest.approx(times, abs=1e-6)
    assert body["times"] == sorted(body["times"])
    assert body["last_id"] == rows[-1]["id"]
    assert body["next_cursor"] is None


async def test_history_pages_to_older_changes_by_cursor(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=1)
    url = f"/items/{item['id']}/adjustments"
    for _ in range(6):
        assert (await client.post(url, json={"delta": 1})).status_code == 201
    # 7 changes, quantities 1..7: the newest 3, then the 3 before, then the first.
    seen: list[list[int]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await client.get(f"/items/{item['id']}/history", params=params)).json()
        seen.append(body["quantities"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [[5, 6, 7], [2, 3, 4], [1]]


async def test_an_item_with_no_change_has_an_empty_history(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item()
    body = (await client.get(f"/items/{item['id']}/history")).json()
    assert body == {"times": [], "quantities": [], "last_id": None, "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "status"),
    [({"limit": 0}, 422), ({"limit": 50_001}, 422), ({"cursor": "bogus"}, 422)],
)
async def test_bad_history_parameters_are_422(
    client: httpx.AsyncClient, new_item: ItemFactory, params: dict[str, str | int], status: int
) -> None:
    item = await new_item(quantity=1)
    problem(await client.get(f"/items/{item['id']}/history", params=params), status)


async def test_history_of_a_missing_item_is_404(client: httpx.AsyncClient) -> None:
    problem(await client.get("/items/999999/history"), 404)
