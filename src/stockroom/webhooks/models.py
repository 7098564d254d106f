"""Webhook subscriptions, their deliveries (one per event and webhook) and the attempts."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stockroom.db import Base, UTCDateTime
from stockroom.events.models import SeqInteger

__all__ = ["Delivery", "DeliveryAttempt", "DispatchCursor", "Webhook"]


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[str] = mapped_column(String(200))  # comma-separated types, or "*"
    # Kept as given: signing needs the secret itself, so it cannot be stored as a hash.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Delivery(Base):
    """One event for one webhook: pending until a 2xx (delivered) or until it gives up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_seq"),
        Index(None, "status", "next_attempt_at"),
        # Claims: each webhook's oldest due deliveries (see queue.claim).
        Index(None, "webhook_id", "status", "next_attempt_at"),
        Index(None, "event_seq"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(SeqInteger, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(BigInteger, ForeignKey("events.seq", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer)
    # When it is due; while an instance is sending it, the end of that instance's lease.
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DeliveryAttempt(Base):
    """One POST to a webhook's URL and what came of it."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index(None, "webhook_id", "id"),
        Index(None, "delivery_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(SeqInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    webhook_id: Mapped[str] = mapped_column(String(36))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # the delivery's status after it
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DispatchCursor(Base):
    """Where the dispatcher is in the event log: events up to here have their deliveries.
    One row; the instance that holds its lock is the one turning events into deliveries."""

    __tablename__ = "webhook_dispatch_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    txid: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
