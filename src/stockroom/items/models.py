"""The ``items`` table and its ledger, ``adjustments``: every change to either is made by
``items.writer``, which keeps the invariant: for every item at every commit, the sum of its
adjustments' deltas equals its quantity, and quantity >= 0."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from stockroom.db import Base, UTCDateTime

__all__ = [
    "ADJUSTMENT_COLUMNS",
    "ITEM_COLUMNS",
    "LOW_STOCK_SQL",
    "Adjustment",
    "AdjustmentRow",
    "Count",
    "Item",
    "ItemRow",
    "Summary",
    "fold_name",
]

# An item is low when its quantity is at or below its reorder point (never without one:
# the comparison with NULL is not true). The list's `low_stock` filter and the summary use
# this very text, so the partial index below serves them.
LOW_STOCK_SQL = "quantity <= reorder_point"

# Case-folded names sort and match by code point on both databases ("C" collation on
# PostgreSQL; SQLite compares bytes), so that order does not depend on a server's locale.
_FOLDED_TEXT = Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
# Ids are 64-bit: bigint on PostgreSQL (migration 0007); SQLite's INTEGER is 64-bit already,
# and only "INTEGER PRIMARY KEY" is the autoincrementing rowid.
_ID = BigInteger().with_variant(Integer(), "sqlite")


def fold_name(name: str) -> str:
    """The form of a name used for case-insensitive search and sorting."""
    return name.casefold()


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_not_negative"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("reorder_point >= 0", name="reorder_point_not_negative"),
        Index(None, "name_key", "id"),
        Index(None, "price_cents", "id"),
        Index(None, "created_at", "id"),
        Index(None, "updated_at", "id"),
        # Few items are low: a partial index of their ids answers `low_stock=true`.
        Index(
            "ix_items_low_stock",
            "id",
            postgresql_where=text(LOW_STOCK_SQL),
            sqlite_where=text(LOW_STOCK_SQL),
        ),
        # SQLite reuses the largest freed rowid without AUTOINCREMENT: a new row would get a
        # deleted one's id (and URL and ETag).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # fold_name(name), kept by the service; what `q` and `sort=name` use.
    name_key: Mapped[str] = mapped_column(_FOLDED_TEXT)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Money is stored as whole cents: exact on both databases, and sorts as a number.
    price_cents: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Null: none. Last, where the migration that added it put it (ItemRow follows the table).
    reorder_point: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Adjustment(Base):
    __tablename__ = "adjustments"
    __table_args__ = (
        CheckConstraint("delta <> 0", name="delta_not_zero"),
        CheckConstraint("quantity_after >= 0", name="quantity_after_not_negative"),
        Index(None, "item_id", "id"),
        # SQLite reuses the largest freed rowid without AUTOINCREMENT: a new row would get a
        # deleted one's id (and URL and ETag).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    # An item can only be deleted at zero stock; its ledger goes with it (see docs/decisions.md).
    item_id: Mapped[int] = mapped_column(_ID, ForeignKey("items.id", ondelete="CASCADE"))
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    quantity_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ItemRow(NamedTuple):
    """An item as read: the columns of ``items``, in table order (both databases' stores
    return these, so that nothing above them depends on a driver's row type)."""

    id: int
    sku: str
    name: str
    name_key: str
    description: str | None
    price_cents: int
    quantity: int
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    reorder_point: int | None


class AdjustmentRow(NamedTuple):
    """A ledger row as read: the columns of ``adjustments``, in table order."""

    id: int
    item_id: int
    delta: int
    reason: str | None
    quantity_after: int
    created_at: dt.datetime


class Count(NamedTuple):
    """A list's number of matches (``count=true``), and whether it is exact or an estimate."""

    total: int
    exact: bool


class Summary(NamedTuple):
    """The catalogue's counts as read (GET /items/summary)."""

    items: int
    units: int
    value_cents: int
    out_of_stock: int
    low_stock: int


ITEM_COLUMNS = ItemRow._fields
ADJUSTMENT_COLUMNS = AdjustmentRow._fields
