"""GET /items/export, and export -> import round trips."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.databases import empty_tables
from tests.support.items import ItemFactory
from tests.support.problems import problem

FIELDS = ("sku", "name", "description", "price", "quantity")


async def everything(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    body = (await client.get("/items", params={"limit": 500})).json()
    return [{k: item[k] for k in FIELDS} for item in body["data"]]


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def test_csv_export(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    await new_item(sku="B", name='Bee, "quoted"', price="2.50", quantity=3, description="x\ny")
    await new_item(sku="A", name="Ant", price="10.00")
    response = await client.get("/items/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="items-\d{8}T\d{6}Z\.csv"', disposition)
    assert response.text.startswith(
        "id,sku,name,description,price,quantity,version,created_at,updated_at,reorder_point\n"
    )
    rows = parse_csv(response.text)
    assert [r["sku"] for r in rows] == ["B", "A"]  # default sort: id
    assert rows[0]["name"] == 'Bee, "quoted"'
    assert rows[0]["description"] == "x\ny"
    assert rows[0]["price"] == "2.50"
    assert rows[1]["description"] == ""
    listed = (await client.get("/items")).json()["data"]
    assert [r["created_at"] for r in rows] == [i["created_at"] for i in listed]


async def test_ndjson_export_with_filters_and_sort(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    for n, price in enumerate(["5.00", "1.00", "9.00", "3.00"]):
        await new_item(sku=f"P{n}", name=f"thing {n}", price=price, quantity=n)
    response = await client.get(
        "/items/export", params={"format": "ndjson", "sort": "-price", "in_stock": "true"}
    )
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["content-disposition"].endswith('.ndjson"')
    rows = [orjson.loads(line) for line in response.content.splitlines()]
    listed = (await client.get("/items", params={"sort": "-price", "in_stock": "true"})).json()[
        "data"
    ]
    assert rows == listed


async def test_export_refuses_bad_parameters(client: httpx.AsyncClient) -> None:
    problem(await client.get("/items/export", params={"format": "xlsx"}), 422)
    problem(await client.get("/items/export", params={"sort": "colour"}), 422)
    problem(await client.get("/items/export", params={"min_price": "5", "max_price": "1"}), 422)


async def test_formula_cells_are_protected_and_import_back_unchanged(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    names = ["=SUM(A1:A9)", "+1", "-2", "@cmd", "'quoted", "plain"]
    for n, name in enumerate(names):
        await new_item(sku=f"F{n}", name=name, description='=HYPERLINK("x")')
    await new_item(sku="-dash", name="sku starts with a dash")
    exported = (await client.get("/items/export")).text
    rows = parse_csv(exported)
    assert [r["name"] for r in rows[: len(names)]] == [
        "'=SUM(A1:A9)", "'+1", "'-2", "'@cmd", "''quoted", "plain",
    ]  # fmt: skip
    assert rows[0]["description"] == '\'=HYPERLINK("x")'
    assert rows[-1]["sku"] == "'-dash"
    before = await everything(client)
    await _reimport_into_empty(app, client, exported, "text/csv")
    assert await everything(client) == before


async def _reimport_into_empty(
    app: FastAPI, client: httpx.AsyncClient, body: str | bytes, media: str
) -> None:
    await empty_tables(app)  # an empty database, as a new installation has
    assert await everything(client) == []
    content = body.encode() if isinstance(body, str) else body
    response = await client.post(
        "/items/import", content=content, headers={"content-type": media}, params={"mode": "atomic"}
    )
    assert response.status_code == 200, response.text


# Items as users write them: any unicode, quotes, commas, newlines in descriptions,
# formula-like starts, the longest allowed values.
_text_chars = st.characters(codec="utf-8", exclude_characters="\x00")
_names = st.one_of(
    st.text(_text_chars.filter(lambda c: c.isprintable()), min_size=1, max_size=200),
    st.sampled_from(["=1+1", "+x", "-y", "@z", "'a", 'say "hi", then go', "x" * 200]),
).filter(lambda name: name.strip() != "")
_items = st.lists(
    st.fixed_dictionaries(
        {
            "sku": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
            "name": _names,
            "description": st.none()
            | st.text(_text_chars, min_size=1, max_size=300)
            | st.just("y" * 10_000),
            "price": st.integers(0, 999_999_999_999).map(lambda c: f"{c // 100}.{c % 100:02d}"),
            "quantity": st.integers(0, 2_147_483_647),
        }
    ),
    max_size=8,
    unique_by=lambda item: item["sku"],
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_items, fmt=st.sampled_from(["csv", "ndjson"]))
async def test_export_then_import_reproduces_every_item(
    app: FastAPI, client: httpx.AsyncClient, data: list[dict[str, Any]], fmt: str
) -> None:
    await empty_tables(app)
    for item in data:
        response = await client.post("/items", json=item)
        if response.status_code == 422:  # e.g. a generated name hypothesis made too odd
            continue
        assert response.status_code == 201, response.text
    before = await everything(client)
    exported = await client.get("/items/export", params={"format": fmt})
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    await _reimport_into_empty(app, client, exported.content, media)
    after = await everything(client)
    key = lambda item: item["sku"]  # noqa: E731
    assert sorted(after, key=key) == sorted(before, key=key)
