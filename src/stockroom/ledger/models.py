"""The ``adjustments`` table: the ledger that explains every item's quantity."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from stockroom.db import Base, UTCDateTime

__all__ = ["Adjustment"]


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

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # An item can only be deleted at zero stock; its ledger goes with it (see docs/decisions.md).
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    quantity_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
