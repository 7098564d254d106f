"""Ids past 32 bits (issue #23, migration 0007): an item and its ledger whose ids are above
2**31 are created, read, changed, listed by cursor and deleted like any other, on both
databases. (Before 0007 PostgreSQL's INTEGER columns and sequences could not hold them.)"""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from stockroom.db import write_connection

# Past every 32-bit bound (2**31 - 1 signed, 2**32 - 1 unsigned).
START = 2**32 + 5


async def _restart_ids_at(application: FastAPI, first_id: int) -> None:
    """The next item and the next adjustment get ``first_id``, ``first_id + 1``..."""
    async with (
        write_connection(application.state.resources.engine) as connection,
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            for table in ("items", "adjustments"):
                await connection.execute(
                    text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :n, false)"),
                    {"t": table, "n": first_id},
                )
        else:  # AUTOINCREMENT: the next rowid is one past the table's sqlite_sequence row.
            await connection.execute(
                text("DELETE FROM sqlite_sequence WHERE name IN ('items', 'adjustments')")
            )
            await connection.execute(
                text(
                    "INSERT INTO sqlite_sequence (name, seq) "
                    "VALUES ('items', :n - 1), ('adjustments', :n - 1)"
                ),
                {"n": first_id},
            )


async def test_items_and_adjustments_with_ids_past_32_bits(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await client.post("/items", json={"sku": "LOW", "name": "Below", "price": "1.00"})
    await _restart_ids_at(app, START)

    created = await client.post(
        "/items", json={"sku": "BIG", "name": "Big", "price": "2.50", "quantity": 3}
    )
    assert created.status_code == 201, created.text
    item = created.json()
    item_id = item["id"]
    assert item_id == START
    url = f"/items/{item_id}"
    assert created.headers["location"].endswith(url)

    fetched = await client.get(url)
    assert fetched.status_code == 200
    assert fetched.json() == item
    etag = fetched.headers["etag"]
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304

    patched = await client.patch(url, json={"name": "Bigger"}, headers={"If-Match": etag})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Bigger"

    adjustments = []
    for delta in (5, -2, -6):
        response = await client.post(f"{url}/adjustments", json={"delta": delta})
        assert response.status_code == 201, response.text
        adjustments.append(response.json())
    # The item's starting stock was the first ledger row past the restart.
    assert [a["id"] for a in adjustments] == [START + 1, START + 2, START + 3]
    assert {a["item_id"] for a in adjustments} == {item_id}
    assert (await client.get(url)).json()["quantity"] == 0

    # The ledger, newest first, two rows a page, by cursor.
    seen: list[int] = []
    page = (await client.get(f"{url}/adjustments", params={"limit": 2})).json()
    while True:
        seen += [row["id"] for row in page["data"]]
        if page["next_cursor"] is None:
            break
        page = (
            await client.get(
                f"{url}/adjustments", params={"limit": 2, "cursor": page["next_cursor"]}
            )
        ).json()
    assert seen == [START + 3, START + 2, START + 1, START]

    # The catalogue by cursor, both ways: the small id and the big one.
    for sort, expected in (("id", ["LOW", "BIG"]), ("-id", ["BIG", "LOW"])):
        first = (await client.get("/items", params={"limit": 1, "sort": sort})).json()
        rest = (
            await client.get(
                "/items", params={"limit": 1, "sort": sort, "cursor": first["next_cursor"]}
            )
        ).json()
        assert [i["sku"] for i in first["data"] + rest["data"]] == expected
        assert rest["next_cursor"] is None

    deleted = await client.delete(url)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(url)).status_code == 404
    assert (await client.get(f"{url}/adjustments")).status_code == 404
    # The largest id the path takes is the largest 64-bit one; beyond it, 422 (not a 500).
    assert (await client.get(f"/items/{2**63 - 1}")).status_code == 404
    assert (await client.get(f"/items/{2**63}")).status_code == 422
