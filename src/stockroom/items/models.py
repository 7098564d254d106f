"""The ``items`` table."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from stockroom.db import Base, UTCDateTime

__all__ = ["Item", "ItemRecord", "fold_name"]

# Case-folded names sort and match by code point on both databases ("C" collation on
# PostgreSQL; SQLite compares bytes), so that order does not depend on a server's locale.
_FOLDED_TEXT = Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def fold_name(name: str) -> str:
    """The form of a name used for case-insensitive search and sorting."""
    return name.casefold()


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_not_negative"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index(None, "name_key", "id"),
        Index(None, "price_cents", "id"),
        Index(None, "created_at", "id"),
        Index(None, "updated_at", "id"),
        # SQLite reuses the largest freed rowid without AUTOINCREMENT: a new row would get a
        # deleted one's id (and URL and ETag).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
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


class ItemRecord(Protocol):
    """An item as read: an :class:`Item`, or a row of the ``items`` table (reads select plain
    rows: no session, no identity map)."""

    @property
    def id(self) -> int: ...
    @property
    def sku(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def name_key(self) -> str: ...
    @property
    def description(self) -> str | None: ...
    @property
    def price_cents(self) -> int: ...
    @property
    def quantity(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def updated_at(self) -> dt.datetime: ...
