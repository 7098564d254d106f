"""An import's events carry, byte for byte, the bodies ``events.log.event_row`` makes from
the API's JSON of the item or ledger row (on PostgreSQL the import puts most of each body
together ahead, in Python, and the database only the ids it assigns: they must not differ
by a space, a key's place, an escape or a time's digits)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stockroom.events.log import event_row
from stockroom.events.models import Event
from stockroom.items.models import (
    ADJUSTMENT_COLUMNS,
    ITEM_COLUMNS,
    Adjustment,
    AdjustmentRow,
    Item,
    ItemRow,
)
from stockroom.items.schemas import adjustment_json, item_json

# Through PgBouncer too: the import's batches take another path there (one transaction).
pytestmark = pytest.mark.pgbouncer

NDJSON = {"content-type": "application/x-ndjson"}
ODD_TEXT = 'tab\there "quoted" back\\slash \u2028 é 雪 🎉 \x01 </script>'


def made_by_event_row(event_id: str, kind: str, payload: bytes, at: dt.datetime) -> str:
    """The body event_row makes for this payload at this time, with this event's id."""
    row = event_row(kind, payload.decode(), at)
    return str(row["body"]).replace(row["id"], event_id, 1)


async def events_after(app: FastAPI, seq: int) -> list[tuple[int, str, str, str, dt.datetime]]:
    async with app.state.resources.engine.connect() as connection:
        rows = await connection.execute(
            select(Event.seq, Event.id, Event.type, Event.body, Event.created_at)
            .where(Event.seq > seq)
            .order_by(Event.txid, Event.seq)
        )
        return [tuple(row) for row in rows]


async def stored(app: FastAPI) -> tuple[dict[int, ItemRow], dict[int, AdjustmentRow]]:
    async with app.state.resources.engine.connect() as connection:
        item_rows = await connection.execute(select(*(getattr(Item, c) for c in ITEM_COLUMNS)))
        ledger_rows = await connection.execute(
            select(*(getattr(Adjustment, c) for c in ADJUSTMENT_COLUMNS))
        )
        found = {row[0]: ItemRow(*row) for row in item_rows}
        return found, {row[0]: AdjustmentRow(*row) for row in ledger_rows}


async def check_bodies(app: FastAPI, after_seq: int) -> tuple[int, dict[str, int]]:
    """Every event after ``after_seq`` against event_row's body of the stored row it is
    about (the item as it is now, the ledger row); the last seq and the count per type."""
    items, ledger = await stored(app)
    kinds: dict[str, int] = {}
    last = after_seq
    for seq, event_id, kind, body, created_at in await events_after(app, after_seq):
        last = max(last, seq)
        kinds[kind] = kinds.get(kind, 0) + 1
        data: dict[str, Any] = orjson.loads(body)["data"]
        if kind == "stock.adjusted":
            payload = adjustment_json(ledger[data["id"]])
        else:
            payload = item_json(items[data["id"]])
        assert body == made_by_event_row(event_id, kind, payload, created_at)
    return last, kinds


async def test_imported_events_bodies_are_event_rows_byte_for_byte(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    rows: list[dict[str, Any]] = [
        {"sku": "B-ODD", "name": "Ünïcødé 雪 🎉 \"q\" \\", "description": ODD_TEXT, "price": "0.05",
         "quantity": 3},
        {"sku": "B-BIG", "name": "Big", "description": None, "price": "1234567.89",
         "quantity": 2_000_000_000, "reorder_point": 10},
        {"sku": "B-ZERO", "name": "Zero stock", "price": "10", "quantity": 0},
        {"sku": "B-NOQ", "name": "No quantity", "description": "", "price": "0.5"},
        {"sku": "B-LOW", "name": "Will be low", "price": "2.00", "quantity": 50,
         "reorder_point": 5},
    ]  # fmt: skip
    body = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    response = await client.post("/items/import", content=body, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 5
    last, kinds = await check_bodies(app, 0)
    assert kinds == {"item.created": 5, "stock.adjusted": 3}

    # Updates: a rename with odd text, a restock, a drop to the reorder point (stock.low),
    # one unchanged; each with its events from the items as they are after it.
    changes: list[dict[str, Any]] = [
        {"sku": "B-ODD", "name": "Renamed ✓ «»", "description": None, "price": "0.05",
         "quantity": 3},
        {"sku": "B-ZERO", "name": "Zero stock", "price": "10", "quantity": 7},
        {"sku": "B-LOW", "name": "Will be low", "price": "2.00", "quantity": 4},
        {"sku": "B-NOQ", "name": "No quantity", "description": "", "price": "0.50"},
    ]  # fmt: skip
    body = b"".join(orjson.dumps(row) + b"\n" for row in changes)
    response = await client.post("/items/import", content=body, headers=NDJSON)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["updated"], report["unchanged"], report["failed"]) == (3, 1, 0), report
    _, kinds = await check_bodies(app, last)
    assert kinds == {"item.updated": 1, "stock.adjusted": 2, "stock.low": 1}
