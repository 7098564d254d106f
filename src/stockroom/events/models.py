"""The ``events`` table: one row per change, written in the change's own transaction."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, FetchedValue, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stockroom.db import Base, UTCDateTime

__all__ = ["EVENT_ID_LENGTH", "Event", "SeqInteger"]

EVENT_ID_LENGTH = 36
# A 64-bit sequence on PostgreSQL; SQLite's INTEGER PRIMARY KEY is 64-bit already (and only
# "INTEGER" makes it the autoincrementing rowid).
SeqInteger = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        # Readers walk the log in (txid, seq) order; see events.log for why.
        Index(None, "txid", "seq"),
        Index(None, "created_at"),
        # A pruned event's seq is never handed out again: a cursor names one event forever.
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SeqInteger, primary_key=True, autoincrement=True)
    # PostgreSQL: the writing transaction's id (pg_current_xact_id(), the column's default);
    # SQLite: 0, where writers take turns and seq order is already commit order.
    txid: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    # The whole webhook body (JSON), exactly as delivered and streamed.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
