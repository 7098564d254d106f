"""The parts of an import's event bodies made ahead in Python (items._postgresql.batch_records
and insert_batch_args), put together as _INSERT_BATCH puts them, are event_row's bodies of
the API's JSON byte for byte, whatever the row holds (the database test of the same,
tests/files/test_import_event_bodies.py, runs the SQL)."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from stockroom.events.log import event_row
from stockroom.items import _postgresql as items
from stockroom.items.models import AdjustmentRow, ItemRow
from stockroom.items.schemas import adjustment_json, item_json
from stockroom.items.store import ValidRow
from tests.unit.properties import UNTIMED

TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
TIMES = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
ROWS = st.builds(
    ValidRow,
    line=st.integers(1, 10**6),
    sku=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    name=TEXT.filter(bool),
    name_key=st.just("key"),
    description=st.none() | TEXT,
    price_cents=st.integers(0, 10**12),
    quantity=st.none() | st.integers(0, 2**31 - 1),
    reorder_point=st.none() | st.integers(0, 2**31 - 1),
    has_reorder_point=st.booleans(),
)
IDS = st.integers(1, 2**63 - 1)


def made_by_event_row(event_id: str, kind: str, payload: bytes, at: dt.datetime) -> str:
    row = event_row(kind, payload.decode(), at)
    return str(row["body"]).replace(row["id"], event_id, 1)


@settings(UNTIMED, max_examples=200)
@given(row=ROWS, now=TIMES, item_id=IDS, ledger_id=IDS)
def test_the_parts_make_event_rows_bodies(
    row: ValidRow, now: dt.datetime, item_id: int, ledger_id: int
) -> None:
    [record] = items.batch_records([row], now)
    created_id, created_tail, stock_id, stock_tail = record[-4:]
    _, _, created_head, created_middle, stock_head, stock_middle, _ = items.insert_batch_args(
        now, 1
    )
    quantity = row.quantity or 0
    item = ItemRow(
        item_id, row.sku, row.name, row.name_key, row.description, row.price_cents, quantity,
        1, now, now, row.reorder_point,
    )  # fmt: skip
    assert uuid.UUID(created_id).version == 4
    assert str(uuid.UUID(created_id)) == created_id
    created = created_head + created_id + created_middle + str(item_id) + created_tail
    assert created == made_by_event_row(created_id, "item.created", item_json(item), now)
    if quantity == 0:
        assert stock_id is None
        assert stock_tail is None
        return
    assert uuid.UUID(stock_id).version == 4
    assert stock_id != created_id
    ledger = AdjustmentRow(ledger_id, item_id, quantity, "import", quantity, now)
    stock = (
        stock_head + stock_id + stock_middle + str(ledger_id) + items._ITEM_ID + str(item_id)
        + stock_tail
    )  # fmt: skip
    assert stock == made_by_event_row(stock_id, "stock.adjusted", adjustment_json(ledger), now)
