"""Properties of walking GET /items by cursor, on every backend.

The test keeps its own model of the stored items (built from the API's own answers to the
POSTs) and checks every page against it: every match exactly once, in the requested order,
ties broken by id in the sort's direction; and, while rows are inserted and deleted between
pages, no duplicate and no skipped row among the rows that live through the whole walk.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.support.databases import empty_tables

# Through PgBouncer too: see tests/conftest.py.
pytestmark = pytest.mark.pgbouncer

Item = dict[str, Any]

# Case variants, non-ASCII letters whose case folding is not one-to-one ("ß" and "ẞ" fold to
# "ss"), and a space: names collide once folded, so ties on the name are common.
NAME_ALPHABET = ["a", "A", "b", "B", "e", "é", "É", "s", "S", "ß", "ẞ", " "]
# Few prices, some equal as numbers but spelt differently, and "2.10" vs "10": a string sort
# would get them wrong.
PRICES = ["0", "0.99", "1", "1.00", "2.10", "10", "10.00", "100.5"]
QUANTITIES = [0, 0, 1, 7, 2_147_483_647]
SORT_KEYS = ["id", "name", "price", "created_at", "updated_at"]

names = st.text(alphabet=st.sampled_from(NAME_ALPHABET), min_size=1, max_size=4).filter(
    lambda name: name.strip() != ""
)
new_items = st.tuples(names, st.sampled_from(PRICES), st.sampled_from(QUANTITIES))


def item_lists(min_size: int, max_size: int) -> st.SearchStrategy[list[tuple[str, str, int]]]:
    """Lists whose length is spread over the whole range (plain st.lists favours short ones)."""
    return st.integers(min_value=min_size, max_value=max_size).flatmap(
        lambda n: st.lists(new_items, min_size=n, max_size=n)
    )


ALL_SORTS = [prefix + key for key in SORT_KEYS for prefix in ("", "-")]
_OPTIONAL_FILTERS: dict[str, st.SearchStrategy[Any]] = {
    "q": st.text(alphabet=st.sampled_from(NAME_ALPHABET), min_size=1, max_size=2),
    "min_price": st.sampled_from(PRICES),
    "max_price": st.sampled_from(PRICES),
    "in_stock": st.booleans(),
}
filters = st.fixed_dictionaries({}, optional=_OPTIONAL_FILTERS).filter(
    lambda f: Decimal(f.get("min_price", "0")) <= Decimal(f.get("max_price", "1000"))
)

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def sort_key(sort: str) -> Callable[[Item], tuple[Any, int]]:
    """What the contract says the order is: the key, then id, both in the sort's direction."""
    field = sort.removeprefix("-")

    def key(item: Item) -> tuple[Any, int]:
        value = item[field]
        if field == "name":
            value = value.casefold()
        elif field == "price":
            value = Decimal(value)
        elif field in ("created_at", "updated_at"):
            value = dt.datetime.fromisoformat(value)
        return value, item["id"]

    return key


def matches(item: Item, params: dict[str, Any]) -> bool:
    """The list filters, as the contract words them."""
    if "q" in params:
        needle = params["q"].casefold()
        if needle not in item["name"].casefold() and needle not in item["sku"].casefold():
            return False
    if "min_price" in params and Decimal(item["price"]) < Decimal(params["min_price"]):
        return False
    if "max_price" in params and Decimal(item["price"]) > Decimal(params["max_price"]):
        return False
    return "in_stock" not in params or (item["quantity"] > 0) == params["in_stock"]


def expected_page(
    live: dict[int, Item], params: dict[str, Any], sort: str, after: Item | None, limit: int
) -> tuple[list[int], bool]:
    """Ids of the page that follows ``after`` in the model, and whether more follow it."""
    key = sort_key(sort)
    descending = sort.startswith("-")
    ordered = sorted(
        (item for item in live.values() if matches(item, params)), key=key, reverse=descending
    )
    if after is not None:
        mark = key(after)
        ordered = [i for i in ordered if (key(i) < mark if descending else key(i) > mark)]
    return [item["id"] for item in ordered[:limit]], len(ordered) > limit


class Store:
    """Creates and deletes items over HTTP and remembers what the API answered."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.live: dict[int, Item] = {}
        self.serial = 0

    async def create(self, name: str, price: str, quantity: int) -> Item:
        self.serial += 1
        # The sku has none of the name letters, so `q` mostly tests the name.
        body = {"sku": f"K-{self.serial:04d}", "name": name, "price": price, "quantity": quantity}
        response = await self.client.post("/items", json=body)
        assert response.status_code == 201, response.text
        item: Item = response.json()
        assert item["name"] == name
        self.live[item["id"]] = item
        return item

    async def delete(self, item_id: int) -> None:
        # Only an item with no stock can be deleted: take its stock out through the ledger.
        quantity = self.live[item_id]["quantity"]
        while quantity > 0:
            delta = -min(quantity, 1_000_000_000)  # the largest delta allowed
            url = f"/items/{item_id}/adjustments"
            response = await self.client.post(url, json={"delta": delta, "reason": "gone"})
            assert response.status_code == 201, response.text
            quantity = response.json()["quantity_after"]
        response = await self.client.delete(f"/items/{item_id}")
        assert response.status_code == 204, response.text
        del self.live[item_id]


async def fetch_page(
    client: httpx.AsyncClient, params: dict[str, Any], cursor: str | None
) -> tuple[list[Item], str | None]:
    query = {**params, "cursor": cursor} if cursor is not None else params
    response = await client.get("/items", params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["data"], body["next_cursor"]


def in_order(rows: list[Item], sort: str) -> bool:
    keys = [sort_key(sort)(row) for row in rows]
    pairs = itertools.pairwise(keys)
    if sort.startswith("-"):
        return all(a > b for a, b in pairs)
    return all(a < b for a, b in pairs)


@PROPERTY_SETTINGS
@given(data=item_lists(0, 25), limit=st.integers(min_value=1, max_value=7), where=filters)
async def test_walking_the_cursors_returns_every_match_once_in_order(
    app: FastAPI,
    client: httpx.AsyncClient,
    data: list[tuple[str, str, int]],
    limit: int,
    where: dict[str, Any],
) -> None:
    # Every sort order is walked over each data set: creating the items is the costly part.
    note(f"data={data!r} limit={limit} where={where!r}")
    await empty_tables(app)
    store = Store(client)
    for name, price, quantity in data:
        await store.create(name, price, quantity)

    for sort in ALL_SORTS:
        params = {**where, "sort": sort, "limit": limit}
        seen: list[Item] = []
        cursor: str | None = None
        for _ in range(len(data) + 2):
            page, cursor = await fetch_page(client, params, cursor)
            assert len(page) <= limit, sort
            if cursor is not None:
                # A page with a cursor after it is full; a walk never ends on an empty page.
                assert len(page) == limit, sort
            seen.extend(page)
            if cursor is None:
                break
        else:
            raise AssertionError(f"{sort}: the walk did not end after {len(data) + 2} pages")

        expected, _ = expected_page(store.live, where, sort, None, len(data) + 1)
        assert [item["id"] for item in seen] == expected, sort
        assert in_order(seen, sort), sort
        # The rows come back as they were created.
        assert all(item == store.live[item["id"]] for item in seen), sort


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), new_items),
        # Which live item to delete, as an index taken modulo their number.
        st.tuples(st.just("delete"), st.integers(min_value=0, max_value=1000)),
    ),
    max_size=3,
)


@PROPERTY_SETTINGS
@given(
    data=item_lists(1, 15),
    sort=st.sampled_from(ALL_SORTS),
    limit=st.integers(min_value=1, max_value=5),
    where=filters,
    changes=st.lists(mutations, max_size=10),
)
async def test_writes_between_pages_neither_duplicate_nor_skip_rows(
    app: FastAPI,
    client: httpx.AsyncClient,
    data: list[tuple[str, str, int]],
    sort: str,
    limit: int,
    where: dict[str, Any],
    changes: list[list[tuple[str, Any]]],
) -> None:
    note(f"data={data!r} sort={sort} limit={limit} where={where!r} changes={changes!r}")
    await empty_tables(app)
    store = Store(client)
    for name, price, quantity in data:
        await store.create(name, price, quantity)
    at_start = set(store.live)
    deleted: set[int] = set()
    params = {**where, "sort": sort, "limit": limit}

    seen: list[Item] = []
    cursor: str | None = None
    last: Item | None = None
    max_pages = len(data) + 3 * len(changes) + 2
    for step in range(max_pages):
        page, cursor = await fetch_page(client, params, cursor)
        assert in_order(page, sort), f"page {step} out of order"
        # The page is exactly what follows the previous page in the current state.
        expected_ids, more = expected_page(store.live, where, sort, last, limit)
        assert [item["id"] for item in page] == expected_ids, f"page {step}"
        assert (cursor is not None) == more
        seen.extend(page)
        if cursor is None:
            break
        last = page[-1]
        for op, arg in changes[step] if step < len(changes) else []:
            if op == "insert":
                await store.create(*arg)
            elif store.live:
                victim = sorted(store.live)[arg % len(store.live)]
                await store.delete(victim)
                deleted.add(victim)
    else:
        raise AssertionError(f"the walk did not end after {max_pages} pages")

    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids)), "a row came back twice"
    assert in_order(seen, sort)
    survivors = {i for i in at_start - deleted if matches(store.live[i], where)}
    assert survivors <= set(ids), f"skipped rows {sorted(survivors - set(ids))}"
