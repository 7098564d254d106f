"""The one writer of ``items`` and of its ledger, ``adjustments``: every change to either,
from the API, the ledger's endpoint or an import, goes through :class:`ItemWriter`.

Its rules: a change bumps the item's version and ``updated_at``; a quantity change writes a
ledger row in the same transaction, so that for every item at every commit the sum of its
adjustments' deltas equals its quantity (and quantity >= 0); every change writes its event
(``item.created``, ``item.updated`` when something really changed, ``item.deleted``,
``stock.adjusted`` per ledger row), and after them ``stock.low`` when a change (not the
creation) takes the item from above its reorder point (or none) to at or below it. An
import's batches follow the same rules in bulk, in the store (set-based SQL on PostgreSQL).

Every method takes the connection of a write transaction that the caller owns
(``Database.transaction``, or an idempotency ``UnitOfWork``) and does not commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import orjson

from stockroom.db import utcnow
from stockroom.errors import ConflictError, PreconditionFailedError
from stockroom.events.log import event_row
from stockroom.events.store import EventStore
from stockroom.http import etag_matches
from stockroom.items.common import crossed_low, etag_of, not_found, to_cents
from stockroom.items.event_types import (
    ITEM_CREATED,
    ITEM_DELETED,
    ITEM_UPDATED,
    STOCK_ADJUSTED,
    STOCK_LOW,
)
from stockroom.items.models import AdjustmentRow, ItemRow, fold_name
from stockroom.items.schemas import MAX_QUANTITY, ItemCreate, adjustment_json, item_json
from stockroom.items.store import BatchCounts, ImportBatch, ItemStore, NewItem, ValidRow

__all__ = [
    "REASON_INITIAL",
    "InsufficientStockError",
    "ItemWriter",
    "QuantityLimitError",
    "StockNotZeroError",
]

REASON_INITIAL = "initial"
C = TypeVar("C")  # the connection type of the database written to


class StockNotZeroError(ConflictError):
    slug, title = "stock-not-zero", "Item still in stock"


class InsufficientStockError(ConflictError):
    slug, title = "insufficient-stock", "Insufficient stock"


class QuantityLimitError(ConflictError):
    slug, title = "quantity-limit", "Quantity limit reached"


class ItemWriter(Generic[C]):
    """Writes of items and their ledger on connections of type ``C`` (the database's)."""

    def __init__(self, store: ItemStore[C], events: EventStore[C]) -> None:
        self._store = store
        self._events = events

    async def create(self, connection: C, data: ItemCreate) -> ItemRow:
        """A new item; a starting quantity is written to the ledger as ``initial``."""
        now = utcnow()
        item, initial = await self._store.insert(
            connection,
            NewItem(
                data.sku, data.name, fold_name(data.name), data.description,
                to_cents(data.price), data.quantity, now, data.reorder_point,
            ),
            REASON_INITIAL,
        )  # fmt: skip
        events = [event_row(ITEM_CREATED, item_json(item).decode(), now)]
        if initial is not None:
            events += _stock_events([initial])
        await self._events.append(connection, events)
        return item

    async def update(
        self, connection: C, item_id: int, changes: dict[str, Any], *, if_match: str | None
    ) -> ItemRow:
        """Apply the fields in ``changes`` (the wire names: sku, name, description,
        price, reorder_point); nothing changes (no version, no event) if they equal the
        item's."""
        current = await self._locked(connection, item_id, if_match)
        columns = dict(changes)
        if "price" in columns:
            columns["price_cents"] = to_cents(columns.pop("price"))
        if "name" in columns:
            columns["name_key"] = fold_name(columns["name"])
        columns = {
            name: value for name, value in columns.items() if getattr(current, name) != value
        }
        if not columns:
            return current
        now = utcnow()
        item = await self._store.update(connection, item_id, columns, now)
        payload = item_json(item).decode()
        events = [event_row(ITEM_UPDATED, payload, now)]
        if crossed_low(current, item):  # its reorder point was set or raised
            events.append(event_row(STOCK_LOW, payload, now))
        await self._events.append(connection, events)
        return item

    async def delete(self, connection: C, item_id: int, *, if_match: str | None) -> None:
        item = await self._locked(connection, item_id, if_match)
        if item.quantity != 0:
            raise StockNotZeroError(
                f"Item {item_id} still has {item.quantity} in stock; adjust it to 0 before "
                "deleting it, so that the ledger accounts for the stock that left.",
                quantity=item.quantity,
            )
        await self._store.delete(connection, item_id)
        payload = orjson.dumps({"id": item.id, "sku": item.sku}).decode()
        await self._events.append(connection, [event_row(ITEM_DELETED, payload, utcnow())])

    async def adjust(
        self, connection: C, item_id: int, delta: int, reason: str | None
    ) -> AdjustmentRow:
        """Change the item's quantity by ``delta``, with its ledger row and its event.

        One conditional UPDATE does the check and the change together, so concurrent
        adjustments can neither lose an update nor oversell: the database applies them one
        after another on the row, and each sees the quantity the previous one left.
        """
        now = utcnow()
        while (
            changed := await self._store.add_stock(connection, item_id, delta, reason, now)
        ) is None:
            # Refused: find out why, under the row lock, so the answer names a real state.
            current = await self._store.quantity_for_update(connection, item_id)
            if current is None:
                raise not_found(item_id)
            if current + delta < 0:
                raise InsufficientStockError(
                    f"Only {current} in stock; cannot remove {-delta}.",
                    available=current,
                    delta=delta,
                )
            if current + delta > MAX_QUANTITY:
                raise QuantityLimitError(
                    f"Quantity would exceed {MAX_QUANTITY}.", available=current, delta=delta
                )
            # Stock changed between the UPDATE and the lock (PostgreSQL, READ COMMITTED): retry.
        adjustment, item = changed
        events = _stock_events([adjustment])
        if crossed_low(item._replace(quantity=item.quantity - delta), item):
            events.append(event_row(STOCK_LOW, item_json(item).decode(), now))
        await self._events.append(connection, events)
        return adjustment

    async def begin_import(self, connection: C) -> None:
        """Prepare ``connection`` for an import's batches (its temporary tables)."""
        await self._store.begin_import(connection)

    async def end_import(self, connection: C) -> None:
        await self._store.end_import(connection)

    def prepare_import_batch(self, rows: Sequence[ValidRow], now: dt.datetime) -> ImportBatch:
        """A batch of an import, ready for :meth:`import_batch`, its changes made at ``now``
        (CPU only: the import calls it in a worker thread, while it writes the batch before)."""
        return self._store.prepare_batch(rows, now)

    async def import_batch(self, connection: C, batch: ImportBatch) -> BatchCounts:
        """Upsert a batch of an import by sku (rows whose sku came earlier in the file are
        dropped and named in ``repeated``)."""
        return await self._store.upsert_batch(connection, batch)

    async def _locked(self, connection: C, item_id: int, if_match: str | None) -> ItemRow:
        """The item, locked for this transaction, after checking ``If-Match``."""
        item = await self._store.lock(connection, item_id)
        if item is None:
            raise not_found(item_id)
        if if_match is not None and not etag_matches(if_match, etag_of(item), weak=False):
            raise PreconditionFailedError(
                f"The item has changed: its current ETag is {etag_of(item)}.",
                headers={"ETag": etag_of(item)},
            )
        return item


def _stock_events(adjustments: Sequence[AdjustmentRow]) -> list[dict[str, Any]]:
    return [
        event_row(STOCK_ADJUSTED, adjustment_json(a).decode(), a.created_at) for a in adjustments
    ]
