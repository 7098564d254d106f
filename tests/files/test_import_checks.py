"""POST /items/import: each error's `field`, and `mode=dry-run` (checked as atomic, nothing
applied)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.event_log import logged
from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: a dry run is a transaction that spans the whole file.
pytestmark = pytest.mark.pgbouncer

CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}
HEADER = "sku,name,description,price,quantity\n"


async def post_csv(
    client: httpx.AsyncClient, text: str, headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    return await client.post(
        "/items/import", content=text.encode(), headers={**CSV, **(headers or {})}, params=params
    )


async def items(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    body = (await client.get("/items", params={"limit": 500})).json()
    return {item["sku"]: item for item in body["data"]}


def fields(report: dict[str, Any]) -> list[tuple[int, str | None]]:
    return [(error["line"], error["field"]) for error in report["errors"]]


# --- field ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ("A,a,,abc,1", "price", "price:"),
        ("A,a,,1,-1", "quantity", "quantity:"),
        ("bad sku,a,,1,1", "sku", "sku:"),
        ("A,,,1,1", "name", "name:"),
        ("A,a,,1", None, "4 fields, the header has 5"),
        ('A,"a,,1,1', None, "the file ends inside a quoted field"),
    ],
)
async def test_a_bad_csv_row_names_its_column(
    client: httpx.AsyncClient, row: str, field: str | None, message: str
) -> None:
    report = (await post_csv(client, HEADER + "OK,fine,,1,1\n" + row + "\n")).json()
    assert report["failed"] == 1, report
    error = report["errors"][0]
    assert set(error) == {"line", "field", "message"}
    assert (error["line"], error["field"]) == (3, field)
    assert message in error["message"]  # the message is what it was before `field`


async def test_ndjson_errors_name_the_key_or_none(client: httpx.AsyncClient) -> None:
    lines = [
        b'{"sku": "A", "name": "a", "price": 1}',
        b'{"sku": "B", "name": "b"}',
        b'{"sku": "C", "name": "c", "price": 1, "colour": "red"}',
        b"{not json",
        b"[1, 2]",
        b'{"sku": "D", "name": "d", "price": 1, "quantity": "many"}',
    ]
    response = await client.post("/items/import", content=b"\n".join(lines), headers=NDJSON)
    report = response.json()
    assert report["created"] == 1
    assert fields(report) == [(2, "price"), (3, "colour"), (4, None), (5, None), (6, "quantity")]


async def test_a_sku_repeated_in_the_file_is_the_sku_field(client: httpx.AsyncClient) -> None:
    report = (await post_csv(client, HEADER + "S,s,,1,1\nT,t,,1,1\nS,again,,1,1\n")).json()
    assert fields(report) == [(4, "sku")]
    assert "first on line 2" in report["errors"][0]["message"]


async def test_unreadable_lines_have_no_field(client: httpx.AsyncClient) -> None:
    huge = "X," + "y" * 1_100_000 + ",,1,1\n"
    body = (HEADER + huge + "A,a,,1,1\n").encode() + b"B,\xff,,1,1\n"
    report = (await client.post("/items/import", content=body, headers=CSV)).json()
    assert fields(report) == [(2, None), (4, None)]
    assert "longer than" in report["errors"][0]["message"]
    assert "not valid UTF-8" in report["errors"][1]["message"]


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("sku,name,colour,price", "colour"),
        ("sku,name,quantity", "price"),
        ("sku,name,price,price", "price"),
    ],
)
async def test_a_bad_header_names_the_column(
    client: httpx.AsyncClient, header: str, field: str
) -> None:
    body = problem(await post_csv(client, header + "\nA,a,1,1\n"), 422)
    assert body["type"].endswith("import-rejected")
    assert body["errors"][0]["field"] == field
    assert body["errors"][0]["line"] == 1


async def test_an_empty_file_has_no_field(client: httpx.AsyncClient) -> None:
    body = problem(await post_csv(client, ""), 422)
    assert body["errors"][0]["field"] is None


async def test_an_atomic_rejection_carries_the_fields(client: httpx.AsyncClient) -> None:
    body = problem(await post_csv(client, HEADER + "A,a,,1,1\nB,b,,x,1\n", mode="atomic"), 422)
    error = body["errors"][0]
    assert (error["line"], error["field"], error["loc"], error["msg"]) == (
        3,
        "price",
        ["body", "line", 3],
        error["message"],
    )


# --- mode=dry-run ---------------------------------------------------------------------------


async def snapshot(client: httpx.AsyncClient, app: FastAPI) -> tuple[Any, ...]:
    """What a user (or a webhook) could see change: the items, their ledgers, the events."""
    found = await items(client)
    ledgers = {
        sku: (await client.get(f"/items/{item['id']}/adjustments")).json()["data"]
        for sku, item in found.items()
    }
    return found, ledgers, await logged(app)


async def test_a_clean_dry_run_reports_exact_counts_and_applies_nothing(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="SAME", name="Same", price="1.00", quantity=3)
    await new_item(sku="OLD", name="Old", price="1.00", quantity=5)
    rows = "".join(f"N{n},n,,1.00,{n % 3}\n" for n in range(6000))  # more than one batch
    text = HEADER + "SAME,Same,,1.00,3\nOLD,Renamed,,2.00,9\n" + rows
    before = await snapshot(client, app)

    dry = await post_csv(client, text, mode="dry-run")
    assert dry.status_code == 200, dry.text
    report = dry.json()
    assert report == {"created": 6000, "updated": 1, "unchanged": 1, "failed": 0, "errors": []}
    assert await snapshot(client, app) == before

    # The counts are the ones the import then makes.
    applied = await post_csv(client, text, mode="atomic")
    assert applied.json() == report


async def test_a_dry_run_with_bad_rows_is_422_with_every_problem(
    app: FastAPI, client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="OLD", name="Old", price="1.00", quantity=5)
    text = (
        HEADER
        + "BAD,bad,,-1,1\n"  # a bad row first: atomic would stop writing here
        + "OLD,Renamed,,2.00,9\n"
        + "DUP,first,,1,1\n"
        + "NEW,new,,1,1\n"
        + "DUP,second,,1,1\n"  # still found: a dry run checks every row
    )
    before = await snapshot(client, app)
    body = problem(await post_csv(client, text, mode="dry-run"), 422)
    assert body["type"].endswith("import-rejected")
    assert "dry-run" in body["detail"]
    assert body["failed"] == 2
    assert fields(body) == [(2, "price"), (6, "sku")]
    assert "first on line 4" in body["errors"][1]["message"]
    # What the good rows would do, had the bad ones been left out.
    assert (body["created"], body["updated"], body["unchanged"]) == (2, 1, 0)
    assert await snapshot(client, app) == before


async def test_a_dry_run_of_an_unreadable_file_is_the_same_422(client: httpx.AsyncClient) -> None:
    body = problem(await post_csv(client, "sku,name,colour\nA,a,red\n", mode="dry-run"), 422)
    assert body["errors"][0]["field"] == "colour"
    assert await items(client) == {}


async def test_a_dry_run_ndjson_file(client: httpx.AsyncClient) -> None:
    body = b'{"sku": "A", "name": "a", "price": 1}\n{"sku": "B", "name": "b", "price": 2}\n'
    response = await client.post(
        "/items/import", content=body, headers=NDJSON, params={"mode": "dry-run"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 2
    assert await items(client) == {}


async def test_a_dry_run_with_a_key_stores_nothing(client: httpx.AsyncClient) -> None:
    text = HEADER + "K,k,,1,5\n"
    key = {"Idempotency-Key": "dry-then-real"}
    for _ in range(2):
        dry = await post_csv(client, text, key, mode="dry-run")
        assert dry.status_code == 200
        assert "idempotent-replayed" not in dry.headers
        assert dry.json()["created"] == 1
    assert await items(client) == {}
    # The same key then runs the import for real (no stored answer of the dry run replays).
    real = await post_csv(client, text, key)
    assert real.json()["created"] == 1
    assert "idempotent-replayed" not in real.headers
    assert list(await items(client)) == ["K"]
    # And a dry run after it is still checked, not answered from the stored import.
    again = await post_csv(client, text, key, mode="dry-run")
    assert again.json() == {"created": 0, "updated": 0, "unchanged": 1, "failed": 0, "errors": []}


async def test_a_dry_run_finds_the_errors_atomic_finds(
    client: httpx.AsyncClient,
) -> None:
    text = HEADER + "A,a,,1,1\nB,b,,nope,1\nC,c,,1,-2\n"
    dry = problem(await post_csv(client, text, mode="dry-run"), 422)
    atomic = problem(await post_csv(client, text, mode="atomic"), 422)
    assert dry["errors"] == atomic["errors"]
    assert dry["failed"] == atomic["failed"] == 2


def test_the_document_declares_field_and_dry_run(app: FastAPI) -> None:
    document = app.openapi()
    error = document["components"]["schemas"]["ImportError_"]
    assert error["required"] == ["line", "field", "message"]
    assert error["properties"]["field"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    parameters = document["paths"]["/items/import"]["post"]["parameters"]
    mode = next(p for p in parameters if p["name"] == "mode")
    assert mode["schema"]["enum"] == ["default", "atomic", "dry-run"]
