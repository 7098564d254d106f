"""POST /items/import: streamed CSV and NDJSON, upsert by sku, a report, atomic mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.support.apps import client_for, make_settings, start_app
from tests.support.event_log import logged
from tests.support.items import ItemFactory
from tests.support.problems import problem

# Through PgBouncer too: an import keeps state across its batches (a temporary table), which
# transaction pooling does not carry from one transaction to the next.
pytestmark = pytest.mark.pgbouncer

CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}
HEADER = "sku,name,description,price,quantity\r\n"


async def post_csv(client: httpx.AsyncClient, text: str, **params: Any) -> httpx.Response:
    return await client.post("/items/import", content=text.encode(), headers=CSV, params=params)


async def items(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    body = (await client.get("/items", params={"limit": 500})).json()
    return {item["sku"]: item for item in body["data"]}


async def test_csv_upserts_by_sku_and_reports(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="KEEP", name="Same", price="1.00", quantity=3)
    old = await new_item(sku="OLD", name="Old", price="1.00", quantity=5)
    text = (
        "\ufeff" + HEADER  # a UTF-8 BOM, as spreadsheets write it
        + "KEEP,Same,,1.00,3\r\n"
        + 'OLD,"Renamed, with ""quotes""",,2.50,9\r\n'
        + 'NEW,"Two\nlines? no: the name is one line",,1,0\r\n'
        + 'DESC,Described,"multi\r\nline, ""quoted"" text",0.5,4\r\n'
        + "NOQTY,No quantity column value,,3,\r\n"
    )  # fmt: skip
    response = await post_csv(client, text)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["created"] == 2
    assert report["updated"] == 1
    assert report["unchanged"] == 1
    assert report["failed"] == 1  # the name with a newline breaks the one-line rule
    assert report["errors"][0]["line"] == 4
    assert report["errors"][0]["message"].startswith("name:")

    after = await items(client)
    assert after["OLD"]["name"] == 'Renamed, with "quotes"'
    assert after["OLD"]["price"] == "2.50"
    assert after["OLD"]["quantity"] == 9
    assert after["OLD"]["version"] == old["version"] + 1
    assert after["DESC"]["description"] == 'multi\r\nline, "quoted" text'
    assert after["DESC"]["quantity"] == 4
    assert after["NOQTY"]["quantity"] == 0
    assert after["KEEP"]["version"] == 1
    ledger = (await client.get(f"/items/{old['id']}/adjustments")).json()["data"]
    assert ledger[0]["delta"] == 4
    assert ledger[0]["reason"] == "import"
    assert ledger[0]["quantity_after"] == 9


async def test_missing_quantity_keeps_existing_stock(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="S", name="s", price="1.00", quantity=7)
    response = await post_csv(client, "sku,name,price\nS,renamed,1.00\n")
    assert response.json()["updated"] == 1
    assert (await items(client))["S"]["quantity"] == 7


async def test_ndjson(client: httpx.AsyncClient, new_item: ItemFactory) -> None:
    await new_item(sku="A", name="a", price="1.00", quantity=1)
    lines = [
        {"sku": "A", "name": "a", "price": "1.00", "quantity": 0},
        {"sku": "B", "name": "b", "description": "", "price": 2, "quantity": 2},
        {"sku": "C", "name": "c", "price": "1.001"},
        {"sku": "D", "name": "d", "price": 1, "colour": "red"},
        [1, 2],
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n{not json\n"
    response = await client.post("/items/import", content=body, headers=NDJSON)
    report = response.json()
    assert (report["created"], report["updated"], report["failed"]) == (1, 1, 4)
    assert [e["line"] for e in report["errors"]] == [3, 4, 5, 7]
    after = await items(client)
    assert after["A"]["quantity"] == 0
    assert after["B"]["description"] is None  # empty is no description


async def test_atomic_mode_applies_nothing_on_a_bad_row(
    client: httpx.AsyncClient, new_item: ItemFactory
) -> None:
    await new_item(sku="A", name="a", price="1.00", quantity=1)
    rows = "".join(f"N{n},n,,1.00,1\n" for n in range(2500))  # more than one batch
    text = HEADER + "A,changed,,9.00,5\n" + rows + "BAD,bad,,-1,1\n"
    body = problem(await post_csv(client, text, mode="atomic"), 422)
    assert body["type"].endswith("import-rejected")
    assert body["failed"] == 1
    assert body["created"] == body["updated"] == 0
    assert body["errors"][0]["line"] == 2503
    assert body["errors"][0]["loc"][:2] == ["body", "line"]
    after = await items(client)
    assert list(after) == ["A"]
    assert after["A"]["name"] == "a"
    good = await post_csv(client, HEADER + "A,changed,,9.00,5\n" + rows, mode="atomic")
    assert good.json()["created"] == 2500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sku,name,colour,price\nA,a,red,1\n", "unknown column 'colour'"),
        ("sku,name,quantity\nA,a,1\n", "lacks the column 'price'"),
        ("sku,name,price,price\nA,a,1,1\n", "names a column twice"),
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        # A problem document saved as the file (curl -o without --fail): not "empty".
        ('{"type":"/problems/invalid-request","status":422}\n', "header row is not valid CSV"),
    ],
)
async def test_unreadable_header_is_422_and_applies_nothing(
    client: httpx.AsyncClient, text: str, message: str
) -> None:
    body = problem(await post_csv(client, text), 422)
    assert message in body["detail"]
    assert await items(client) == {}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("A,a,,abc,1", "price:"),
        ("A,a,,1.234,1", "price:"),
        ("A,a,,1,-1", "quantity:"),
        ("A,a,,1,1.5", "quantity:"),
        ("A,a,,1,2147483648", "quantity:"),
        ("bad sku,a,,1,1", "sku:"),
        ("A,,,1,1", "name:"),
        ("A,a,,1", "4 fields, the header has 5"),
        ('A,"a,,1,1', "the file ends inside a quoted field"),
    ],
)
async def test_bad_rows_are_reported_by_line(
    client: httpx.AsyncClient, row: str, message: str
) -> None:
    response = await post_csv(client, HEADER + "OK,fine,,1,1\n" + row + "\nOK2,fine,,1,1\n")
    report = response.json()
    assert report["failed"] == 1, report
    assert report["errors"][0]["line"] == 3
    assert message in report["errors"][0]["message"]
    assert set(await items(client)) >= {"OK"}


async def test_duplicate_sku_in_one_file_is_reported(client: httpx.AsyncClient) -> None:
    rows = "".join(f"S{n},n,,1,1\n" for n in range(1500))
    text = HEADER + "DUP,first,,1,1\n" + rows + "DUP,second,,2,2\nDUP,third,,3,3\n"
    report = (await post_csv(client, text)).json()
    assert report["failed"] == 2
    assert [e["line"] for e in report["errors"]] == [1503, 1504]
    assert "first on line 2" in report["errors"][0]["message"]
    assert (await items(client))["DUP"]["name"] == "first"


async def test_header_only_imports_nothing(client: httpx.AsyncClient) -> None:
    report = (await post_csv(client, HEADER)).json()
    assert report == {"created": 0, "updated": 0, "unchanged": 0, "failed": 0, "errors": []}


async def test_last_line_without_newline_is_read(client: httpx.AsyncClient) -> None:
    report = (await post_csv(client, HEADER + "A,a,,1,1\r\nB,b,,2,2")).json()
    assert report["created"] == 2


async def test_invalid_utf8_stops_the_file(client: httpx.AsyncClient) -> None:
    body = (HEADER + "A,a,,1,1\n").encode() + b"B,\xff\xfe,,1,1\nC,c,,1,1\n"
    report = (await client.post("/items/import", content=body, headers=CSV)).json()
    assert report["created"] == 1
    assert report["errors"][0]["line"] == 3
    assert "not valid UTF-8" in report["errors"][0]["message"]
    atomic = await client.post(
        "/items/import", content=body.replace(b"A,", b"Z,"), headers=CSV, params={"mode": "atomic"}
    )
    problem(atomic, 422)
    assert "Z" not in await items(client)


async def test_a_5_mb_line_is_refused_and_the_rest_read(client: httpx.AsyncClient) -> None:
    huge = "X," + "y" * 5_000_000 + ",,1,1\n"
    report = (await post_csv(client, HEADER + huge + "A,a,,1,1\n")).json()
    assert report["failed"] == 1
    assert report["errors"][0]["line"] == 2
    assert "longer than" in report["errors"][0]["message"]
    assert report["created"] == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", ""])
async def test_other_media_types_are_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/items/import", content=b"sku,name,price\n", headers={"content-type": content_type}
    )
    problem(response, 415)


async def test_import_has_its_own_size_limit(
    database_url: str, admin_key: str, client: httpx.AsyncClient
) -> None:
    settings = make_settings(database_url, max_body_bytes=1024, import_max_bytes=50_000)
    application, lifespan = await start_app(settings)
    rows = "".join(f"L{n},n,,1,1\n" for n in range(2000))  # ~26 KB: over the JSON limit
    try:
        async with client_for(application, admin_key) as http:
            ok = await http.post("/items/import", content=(HEADER + rows).encode(), headers=CSV)
            assert ok.status_code == 200
            assert ok.json()["created"] == 2000
            big = (HEADER + rows * 3).encode()
            problem(await http.post("/items/import", content=big, headers=CSV), 413)
    finally:
        await lifespan.__aexit__(None, None, None)


async def test_idempotent_import(client: httpx.AsyncClient) -> None:
    text = HEADER + "I,i,,1,5\n"
    headers = {**CSV, "Idempotency-Key": "import-1"}
    first = await client.post("/items/import", content=text.encode(), headers=headers)
    again = await client.post("/items/import", content=text.encode(), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post(
        "/items/import", content=(text + "J,j,,1,1\n").encode(), headers=headers
    )
    problem(other, 422)
    assert list(await items(client)) == ["I"]
    item = (await items(client))["I"]
    assert len((await client.get(f"/items/{item['id']}/adjustments")).json()["data"]) == 1


async def test_other_requests_keep_answering_during_an_import(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Parsing runs in a worker thread: pings are answered while a big import runs."""
    rows = "".join(f"P{n:06d},Item number {n},some description,{n % 997}.99,{n % 50}\n"
                   for n in range(30_000))  # fmt: skip
    body = (HEADER + rows).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    done = asyncio.Event()
    answered_during: list[float] = []

    async def ping_until_done() -> None:
        while not done.is_set():
            started = time.perf_counter()
            assert (await client.get("/ping")).status_code == 200
            if not done.is_set():
                answered_during.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    async def run_import() -> httpx.Response:
        try:
            return await client.post("/items/import", content=chunks(), headers=CSV)
        finally:
            done.set()

    response, _ = await asyncio.gather(run_import(), ping_until_done())
    assert response.json()["created"] == 30_000
    assert len(answered_during) >= 5
    print(
        f"\n{len(answered_during)} pings during the import; slowest "
        f"{max(answered_during) * 1000:.1f} ms, median "
        f"{sorted(answered_during)[len(answered_during) // 2] * 1000:.1f} ms"
    )


async def test_a_stray_quote_in_an_unquoted_field_loses_no_lines(client: httpx.AsyncClient) -> None:
    """A quote inside an unquoted field is an ordinary character (as Python's csv reads it):
    it must not open a quoted field that swallows the lines after it."""
    text = 'sku,name,price\nQ-1,5" nails,1.00\nQ-2,Plain,2.00\nQ-3,"Quoted, with comma",3.00\n'
    report = (await post_csv(client, text)).json()
    assert report["created"] == 3, report
    assert report["failed"] == 0
    found = await items(client)
    assert found["Q-1"]["name"] == '5" nails'
    assert found["Q-3"]["name"] == "Quoted, with comma"


@pytest.mark.parametrize("mode", ["default", "atomic"])
async def test_an_imported_items_created_event_comes_before_its_stock_event(
    app: FastAPI, client: httpx.AsyncClient, mode: str
) -> None:
    """As POST /items writes them: a consumer of the log (a webhook, the stream) hears of an
    item before it hears of its stock."""
    body = b"sku,name,price,quantity\nORD-1,One,1.00,3\nORD-2,Two,2.00,0\nORD-3,Three,3.00,7\n"
    answer = await client.post(
        f"/items/import?mode={mode}", content=body, headers={"content-type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"] == 3
    ids = {item["sku"]: item["id"] for item in (await client.get("/items")).json()["data"]}
    skus = {item_id: sku for sku, item_id in ids.items()}
    # Each item's events, in log order: the item's own carry its id as "id", a ledger row's
    # as "item_id".
    per_item: dict[str, list[str]] = {}
    for event in await logged(app):
        data = event["data"]
        item_id = data["item_id"] if event["type"] == "stock.adjusted" else data["id"]
        per_item.setdefault(skus[item_id], []).append(event["type"])
    assert per_item == {
        "ORD-1": ["item.created", "stock.adjusted"],
        "ORD-2": ["item.created"],
        "ORD-3": ["item.created", "stock.adjusted"],
    }
