"""The items part of the contract, over HTTP, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import httpx
import pytest

from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: see tests/conftest.py.
pytestmark = pytest.mark.pgbouncer

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_create_returns_item_location_and_etag(client: httpx.AsyncClient) -> None:
    body = {"sku": "CHAIR-OAK-01", "name": "Oak chair", "price": 49.9, "quantity": 12}
    response = await client.post("/items", json=body)
    assert response.status_code == 201
    item = response.json()
    assert item["sku"] == "CHAIR-OAK-01"
    assert item["name"] == "Oak chair"
    assert item["description"] is None
    assert item["price"] == "49.90"
    assert item["quantity"] == 12
    assert item["version"] == 1
    assert RFC3339_UTC.match(item["created_at"])
    assert item["created_at"] == item["updated_at"]
    assert response.headers["location"] == f"/items/{item['id']}"
    assert response.headers["etag"] == f'"{item["id"]}-1"'

    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == item
    assert fetched.headers["etag"] == response.headers["etag"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("12.5", "12.50"),
        (12.5, "12.50"),
        ("0", "0.00"),
        (7, "7.00"),
        ("9999999999.99", "9999999999.99"),
    ],
)
async def test_money_is_a_two_place_string(
    client: httpx.AsyncClient, given: object, stored: str
) -> None:
    response = await client.post("/items", json={"sku": "M", "name": "m", "price": given})
    assert response.status_code == 201, response.text
    assert response.json()["price"] == stored


@pytest.mark.parametrize(
    "price", ["1.234", 1.234, -1, "-0.01", "10000000000.00", "NaN", "Infinity", "abc", None, True]
)
async def test_bad_money_is_422_and_stores_nothing(
    client: httpx.AsyncClient, price: object
) -> None:
    response = await client.post("/items", json={"sku": "BAD", "name": "x", "price": price})
    body = problem(response, 422)
    assert ["body", "price"] in [e["loc"][:2] for e in body["errors"]]
    assert (await client.get("/items")).json()["data"] == []


async def test_quantity_defaults_to_zero(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"sku": "Q", "name": "q", "price": 1})
    assert response.json()["quantity"] == 0


async def test_duplicate_sku_is_409(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    await new_item(sku="DUP")
    body = problem(await client.post("/items", json={"sku": "DUP", "name": "b", "price": 1}), 409)
    assert body["type"].endswith("duplicate")
    assert len((await client.get("/items")).json()["data"]) == 1


async def test_concurrent_posts_with_one_sku_give_one_201_and_409s(
    client: httpx.AsyncClient,
) -> None:
    body = {"sku": "RACE", "name": "race", "price": "1.00"}
    responses = await asyncio.gather(*(client.post("/items", json=body) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 7
    for response in responses:
        if response.status_code == 409:
            problem(response, 409)
    assert len((await client.get("/items")).json()["data"]) == 1


async def test_unknown_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items", json={"sku": "U", "name": "u", "price": 1, "colour": "red"}
    )
    body = problem(response, 422)
    assert body["errors"][0]["loc"] == ["body", "colour"]


async def test_get_missing_is_404_and_non_integer_is_422(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/items/999"), 404)
    assert body["type"].endswith("not-found")
    problem(await client.get("/items/abc"), 422)
    problem(await client.get("/items/99999999999999999999"), 422)


async def test_if_none_match_gives_304(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    item = await new_item()
    etag = f'"{item["id"]}-1"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await client.get(f"/items/{item['id']}", headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    stale = await client.get(f"/items/{item['id']}", headers={"If-None-Match": '"x-0"'})
    assert stale.status_code == 200


async def test_patch_updates_and_bumps_version(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(name="Old", quantity=5)
    response = await client.patch(
        f"/items/{item['id']}", json={"name": "New", "price": "2.5", "description": "d"}
    )
    assert response.status_code == 200
    updated = response.json()
    assert updated["name"] == "New"
    assert updated["price"] == "2.50"
    assert updated["description"] == "d"
    assert updated["quantity"] == 5
    assert updated["version"] == 2
    assert response.headers["etag"] == f'"{item["id"]}-2"'
    assert dt.datetime.fromisoformat(updated["updated_at"]) > dt.datetime.fromisoformat(
        item["updated_at"]
    )
    assert updated["created_at"] == item["created_at"]
    assert (await client.get(f"/items/{item['id']}")).json() == updated


async def test_patch_description_to_null(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    item = await new_item(description="something")
    response = await client.patch(f"/items/{item['id']}", json={"description": None})
    assert response.status_code == 200
    assert response.json()["description"] is None


async def test_patch_with_no_change_keeps_the_version(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(name="Same")
    for body in ({}, {"name": "Same"}, {"price": item["price"]}):
        response = await client.patch(f"/items/{item['id']}", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == item


async def test_patch_if_match(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    item = await new_item(name="A")
    url = f"/items/{item['id']}"
    stale = await client.patch(url, json={"name": "B"}, headers={"If-Match": '"1-7"'})
    body = problem(stale, 412)
    assert body["type"].endswith("precondition-failed")
    assert (await client.get(url)).json()["name"] == "A"

    fresh = await client.patch(url, json={"name": "B"}, headers={"If-Match": f'"{item["id"]}-1"'})
    assert fresh.status_code == 200
    # A weak tag never satisfies If-Match (strong comparison).
    weak = await client.patch(url, json={"name": "C"}, headers={"If-Match": f'W/"{item["id"]}-2"'})
    problem(weak, 412)
    star = await client.patch(url, json={"name": "D"}, headers={"If-Match": "*"})
    assert star.json()["version"] == 3


async def test_patch_quantity_points_to_adjustments(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(quantity=3)
    body = problem(await client.patch(f"/items/{item['id']}", json={"quantity": 10}), 422)
    assert "adjustments" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "quantity"]
    assert (await client.get(f"/items/{item['id']}")).json()["quantity"] == 3


@pytest.mark.parametrize("field", ["sku", "name", "price"])
async def test_patch_null_for_required_field_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory, field: str
) -> None:
    item = await new_item()
    problem(await client.patch(f"/items/{item['id']}", json={field: None}), 422)


async def test_patch_duplicate_sku_is_409(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    first = await new_item(sku="ONE")
    second = await new_item(sku="TWO")
    problem(await client.patch(f"/items/{second['id']}", json={"sku": "ONE"}), 409)
    assert (await client.get(f"/items/{second['id']}")).json()["sku"] == "TWO"
    assert (await client.get(f"/items/{first['id']}")).json()["version"] == 1


async def test_patch_missing_is_404(client: httpx.AsyncClient) -> None:
    problem(await client.patch("/items/12345", json={"name": "x"}), 404)


async def test_delete(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    item = await new_item()
    url = f"/items/{item['id']}"
    problem(await client.delete(url, headers={"If-Match": '"0-0"'}), 412)
    assert (await client.get(url)).status_code == 200
    response = await client.delete(url, headers={"If-Match": f'"{item["id"]}-1"'})
    assert response.status_code == 204
    assert response.content == b""
    problem(await client.get(url), 404)
    problem(await client.delete(url), 404)


async def test_sku_can_be_reused_after_delete(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    item = await new_item(sku="AGAIN")
    assert (await client.delete(f"/items/{item['id']}")).status_code == 204
    await new_item(sku="AGAIN")


# --- the list -------------------------------------------------------------------------


async def test_list_envelope_and_count(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    for _ in range(3):
        await new_item()
    body = (await client.get("/items")).json()
    assert set(body) == {"data", "next_cursor"}
    assert len(body["data"]) == 3
    assert body["next_cursor"] is None
    counted = (await client.get("/items", params={"count": "true", "limit": 1})).json()
    assert counted["total"] == 3
    assert len(counted["data"]) == 1
    assert counted["next_cursor"] is not None


async def test_list_filters(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    await new_item(sku="CHAIR-1", name="Oak Chair", price="49.90", quantity=2)
    await new_item(sku="TABLE-1", name="Pine table", price="120.00", quantity=0)
    await new_item(sku="LAMP-1", name="Lampe à poser ÉCLAIR", price="15.00", quantity=1)
    await new_item(sku="SIGN-1", name="Straßenschild", price="99.00", quantity=0)

    async def skus(**params: str | int) -> list[str]:
        response = await client.get("/items", params=params)
        assert response.status_code == 200, response.text
        return sorted(item["sku"] for item in response.json()["data"])

    assert await skus(q="chair") == ["CHAIR-1"]
    assert await skus(q="OAK") == ["CHAIR-1"]
    assert await skus(q="table-") == ["TABLE-1"]
    assert await skus(q="éclair") == ["LAMP-1"]  # case-insensitive beyond ASCII
    assert await skus(q="STRASSE") == ["SIGN-1"]  # full case folding: ß is ss
    assert await skus(min_price="20") == ["CHAIR-1", "SIGN-1", "TABLE-1"]
    assert await skus(max_price="49.90") == ["CHAIR-1", "LAMP-1"]
    assert await skus(min_price="15", max_price="49.9") == ["CHAIR-1", "LAMP-1"]
    assert await skus(in_stock="true") == ["CHAIR-1", "LAMP-1"]
    assert await skus(in_stock="false") == ["SIGN-1", "TABLE-1"]
    assert await skus(q="nothing-like-this") == []
    problem(await client.get("/items", params={"min_price": "50", "max_price": "10"}), 422)


@pytest.mark.parametrize("q", ["%", "_", "\\", "'", "' OR 1=1 --", '"; DROP TABLE items; --'])
async def test_q_with_sql_metacharacters_is_literal(
    client: httpx.AsyncClient, new_item: ItemFactory, q: str
) -> None:
    await new_item(name="plain")
    await new_item(name=f"has {q} inside")
    response = await client.get("/items", params={"q": q})
    assert response.status_code == 200
    assert [item["name"] for item in response.json()["data"]] == [f"has {q} inside"]


@pytest.mark.parametrize("sort", ["id", "name", "price", "created_at", "updated_at"])
@pytest.mark.parametrize("descending", [False, True])
async def test_every_sort_key_walks_in_order(
    client: httpx.AsyncClient, new_item: ItemFactory, sort: str, descending: bool
) -> None:
    # Repeated prices and names force ties, which break by id in the sort's direction.
    for n, (name, price) in enumerate(
        [("b", "3.00"), ("A", "1.00"), ("c", "3.00"), ("a", "2.00"), ("B", "1.00"), ("é", "2.00")]
    ):
        await new_item(name=name, price=price, description=str(n))
    key = f"-{sort}" if descending else sort
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"sort": key, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/items", params=params)).json()
        seen.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    def sort_value(item: dict[str, object]) -> object:
        value = item[sort]
        if sort == "name":
            return str(value).casefold()
        if sort == "price":
            return float(str(value))
        return value

    expected = sorted(seen, key=lambda i: (sort_value(i), i["id"]), reverse=descending)
    assert [i["id"] for i in seen] == [i["id"] for i in expected]
    assert len({i["id"] for i in seen}) == 6


@pytest.mark.parametrize(
    "cursor", ["not-a-cursor", "!!!", "W10", "WyJpZCIsMSwyXQ", "eyJhIjogMX0", "WyJuYW1lIiwxLDFd"]
)
async def test_invalid_cursor_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory, cursor: str
) -> None:
    await new_item()
    body = problem(await client.get("/items", params={"cursor": cursor, "sort": "name"}), 422)
    assert body["errors"][0]["loc"] == ["query", "cursor"]


async def test_cursor_from_another_sort_is_422(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    for _ in range(3):
        await new_item()
    cursor = (await client.get("/items", params={"limit": 1, "sort": "price"})).json()[
        "next_cursor"
    ]
    problem(await client.get("/items", params={"cursor": cursor, "sort": "-price"}), 422)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": 10**12},
        {"limit": "ten"},
        {"sort": "colour"},
        {"sort": "--id"},
        {"in_stock": "maybe"},
        {"min_price": "-1"},
        {"min_price": "1.001"},
        {"count": "perhaps"},
    ],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str | int]
) -> None:
    problem(await client.get("/items", params=params), 422)


async def test_a_deleted_items_id_is_never_given_to_a_new_item(
    client: httpx.AsyncClient,
) -> None:
    """Otherwise the new item has the old one's URL and ETag (`"<id>-1"`): a client's stale
    `If-Match` applies to the wrong item, a cached `If-None-Match` gets a false 304."""
    old = await client.post("/items", json={"sku": "OLD", "name": "Old", "price": "1.00"})
    assert old.status_code == 201, old.text
    assert (await client.delete(old.headers["location"])).status_code == 204
    new = await client.post("/items", json={"sku": "NEW", "name": "New", "price": "9.00"})
    assert new.status_code == 201, new.text
    assert new.json()["id"] != old.json()["id"]
    assert new.headers["etag"] != old.headers["etag"]
    stale = await client.get(
        new.headers["location"], headers={"If-None-Match": old.headers["etag"]}
    )
    assert stale.status_code == 200
