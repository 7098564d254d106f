"""What the items writer and readers need from a database, one implementation each:
``_postgresql.py`` (asyncpg, prepared statements, COPY) and ``_sqlite.py`` (SQLAlchemy
Core). The lifespan picks one by ``Settings.backend`` (``stockroom.stores``).

Reads open their own connection (``Database.read``); writes take the connection of the
caller's transaction (``Database.transaction``), so that an item, its ledger row, its events
and an idempotency record commit together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from stockroom.items.models import AdjustmentRow, Count, ItemRow, Summary
from stockroom.items.repository import Listing

__all__ = ["BatchCounts", "ImportBatch", "ItemStore", "NewItem", "ValidRow"]

# The connection type of the store's database (asyncpg's, or SQLAlchemy's AsyncConnection).
C = TypeVar("C", contravariant=True)


class NewItem(NamedTuple):
    sku: str
    name: str
    name_key: str
    description: str | None
    price_cents: int
    quantity: int
    created_at: dt.datetime
    reorder_point: int | None


class ValidRow(NamedTuple):
    """A valid row of an import file as the database takes it (the columns of the
    PostgreSQL batch table)."""

    line: int
    sku: str
    name: str
    name_key: str
    description: str | None
    price_cents: int
    quantity: int | None
    reorder_point: int | None = None
    # Whether the row names a reorder point (None above may be "clear it" or "not given":
    # a row without one leaves an existing item's as it is).
    has_reorder_point: bool = False


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """A batch of an import's valid rows, ready to write (``ItemStore.prepare_batch``)."""

    rows: Sequence[ValidRow]
    # The time of every change the batch makes (the items', the ledger's, the events').
    now: dt.datetime
    # What the store made of the rows ahead of writing them, if anything (PostgreSQL: the
    # rows of its COPY, with the events' bodies but for what the database assigns).
    prepared: Any = None


@dataclass
class BatchCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    # (line, sku, line where the sku came first) of rows dropped as repeats in the file.
    repeated: list[tuple[int, str, int]] | None = None


class ItemStore(Protocol[C]):
    # --- reads: each opens and returns its own connection ---------------------------------
    async def get(self, item_id: int) -> ItemRow | None: ...

    async def page(self, listing: Listing) -> Sequence[ItemRow]: ...

    async def count(self, listing: Listing, *, exact: bool = False) -> Count:
        """The number of matches: exact with ``exact``, else exact where that is cheap and
        an estimate (``Count.exact`` false) where it is not."""

    async def summary(self) -> Summary:
        """The catalogue's counts, in one statement."""

    async def fold_totals(self) -> None:
        """Keep the catalogue's totals quick to read (PostgreSQL: their rows folded into one;
        SQLite: nothing to do), every few seconds from the app's background work."""

    async def adjustments(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[AdjustmentRow] | None:
        """An item's ledger rows, newest first, below ``before_id``; None: no such item."""

    async def history(
        self, item_id: int, before_id: int | None, limit: int
    ) -> Sequence[tuple[int, float, int]] | None:
        """The same rows as :meth:`adjustments`, only ``(id, Unix time, quantity_after)``
        each (a chart's points, without the rest of the rows); None: no such item."""

    def export_rows(self, listing: Listing, chunk: int) -> AsyncIterator[Sequence[ItemRow]]:
        """Every row of the listing, ``chunk`` at a time, from one server-side cursor."""

    def export_csv(self, listing: Listing) -> AsyncIterator[bytes] | None:
        """The export's CSV written by the database itself, if it can (else None)."""

    # --- writes: on the connection of the caller's transaction ----------------------------
    async def lock(self, connection: C, item_id: int) -> ItemRow | None:
        """The item, locked until the transaction ends."""

    async def insert(
        self, connection: C, item: NewItem, reason: str
    ) -> tuple[ItemRow, AdjustmentRow | None]:
        """The new item and, for a starting quantity, its ledger row (``reason``), in one
        statement where the database can; ``DuplicateError`` if the sku is taken."""

    async def update(
        self, connection: C, item_id: int, changes: dict[str, Any], now: dt.datetime
    ) -> ItemRow:
        """Apply ``changes`` (columns), bump the version; ``DuplicateError`` on a taken sku."""

    async def delete(self, connection: C, item_id: int) -> None: ...

    async def add_stock(
        self, connection: C, item_id: int, delta: int, reason: str | None, now: dt.datetime
    ) -> tuple[AdjustmentRow, ItemRow] | None:
        """Add ``delta`` to the quantity if the result stays within 0..MAX_QUANTITY, bump the
        version and write the ledger row, in one statement; the ledger row and the item
        after the change, or None if refused or there is no such item."""

    async def quantity_for_update(self, connection: C, item_id: int) -> int | None: ...

    # --- imports: one connection for the whole file ---------------------------------------
    async def begin_import(self, connection: C) -> None:
        """Create the import's temporary tables on ``connection``."""

    async def end_import(self, connection: C) -> None: ...

    def prepare_batch(self, rows: Sequence[ValidRow], now: dt.datetime) -> ImportBatch:
        """The batch as :meth:`upsert_batch` takes it, with whatever the store can make of
        it before writing. Plain CPU work, no I/O: the import calls it in a worker thread
        while the previous batch is written."""

    async def upsert_batch(self, connection: C, batch: ImportBatch) -> BatchCounts:
        """Drop rows whose sku came earlier in the file, then upsert the rest by sku, with
        their ledger rows and events (the rules of ``items.writer``)."""
