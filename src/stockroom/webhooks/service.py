"""Webhook subscriptions: the admin endpoints' create, read, list and delete, the attempts
of a webhook's deliveries, and a retry asked for by hand. The deliveries themselves are the
queue's (:mod:`stockroom.webhooks.queue`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import begin_write, utcnow
from stockroom.errors import ConflictError, InvalidRequestError, NotFoundError
from stockroom.events.models import Event
from stockroom.http import cursor_int, decode_cursor, encode_cursor, invalid_cursor
from stockroom.webhooks.models import Delivery, DeliveryAttempt, Webhook
from stockroom.webhooks.queue import DELIVERED, PENDING
from stockroom.webhooks.schemas import WebhookCreate
from stockroom.webhooks.security import AddressRefusedError, check_host, generate_secret

__all__ = [
    "AlreadyDeliveredError",
    "create_webhook",
    "delete_webhook",
    "get_webhook",
    "list_attempts",
    "list_webhooks",
    "retry_delivery",
]


class AlreadyDeliveredError(ConflictError):
    """A retry of a delivery that its receiver already accepted."""

    slug, title = "already-delivered", "Already delivered"


async def create_webhook(
    session: AsyncSession, data: WebhookCreate, *, allow_private: bool
) -> Webhook:
    url = httpx.URL(data.url)
    try:
        await check_host(
            url.host,
            url.port or (443 if url.scheme == "https" else 80),
            allow_private=allow_private,
        )
    except AddressRefusedError as exc:
        raise InvalidRequestError(
            f"The URL is refused: {exc}. Webhooks call public addresses only "
            "(STOCKROOM_WEBHOOK_ALLOW_PRIVATE=true lifts this).",
            loc=("body", "url"),
        ) from None
    webhook = Webhook(
        id=str(uuid.uuid4()),
        url=data.url,
        events=",".join(data.events),
        secret=data.secret or generate_secret(),
        created_at=utcnow(),
    )
    await begin_write(session)
    session.add(webhook)
    await session.commit()
    return webhook


async def get_webhook(session: AsyncSession, webhook_id: str) -> Webhook:
    webhook = await session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFoundError(f"No webhook with id {webhook_id}.")
    return webhook


async def list_webhooks(
    session: AsyncSession, *, cursor: str | None, limit: int
) -> tuple[Sequence[Webhook], str | None]:
    stmt = select(Webhook)
    if cursor is not None:
        after = _webhook_cursor(decode_cursor(cursor))
        stmt = stmt.where(tuple_(Webhook.created_at, Webhook.id) > after)
    rows = (
        await session.scalars(stmt.order_by(Webhook.created_at, Webhook.id).limit(limit + 1))
    ).all()
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = (
        encode_cursor(["webhooks", page[-1].created_at.isoformat(), page[-1].id]) if more else None
    )
    return page, next_cursor


def _webhook_cursor(payload: list[Any]) -> tuple[dt.datetime, str]:
    try:
        kind, created, webhook_id = payload
        if kind != "webhooks" or not isinstance(webhook_id, str):
            raise ValueError
        at = dt.datetime.fromisoformat(created)
        # The column takes aware times only (db.UTCDateTime); the cursors we make have a zone.
        if at.tzinfo is None:
            raise ValueError
        return at, webhook_id
    except (ValueError, TypeError):
        raise invalid_cursor() from None


async def delete_webhook(session: AsyncSession, webhook_id: str) -> None:
    await begin_write(session)
    deleted = (
        await session.execute(delete(Webhook).where(Webhook.id == webhook_id).returning(Webhook.id))
    ).first()
    if deleted is None:
        raise NotFoundError(f"No webhook with id {webhook_id}.")
    await session.commit()


async def list_attempts(
    session: AsyncSession, webhook_id: str, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A webhook's delivery attempts, newest first."""
    await get_webhook(session, webhook_id)
    stmt = (
        select(DeliveryAttempt, Event.id.label("event_id"), Event.type.label("event_type"))
        .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
        .join(Event, Event.seq == Delivery.event_seq)
        .where(DeliveryAttempt.webhook_id == webhook_id)
    )
    if cursor is not None:
        payload = decode_cursor(cursor)
        if len(payload) != 2 or payload[0] != "-attempt":
            raise invalid_cursor()
        stmt = stmt.where(DeliveryAttempt.id < cursor_int(payload[1]))
    rows = (await session.execute(stmt.order_by(DeliveryAttempt.id.desc()).limit(limit + 1))).all()
    page = [
        {
            "id": attempt.id,
            "event_id": event_id,
            "type": event_type,
            "attempt": attempt.attempt,
            "status": attempt.status,
            "response_status": attempt.response_status,
            "error": attempt.error,
            "duration_ms": attempt.duration_ms,
            "next_attempt_at": attempt.next_attempt_at,
            "created_at": attempt.created_at,
        }
        for attempt, event_id, event_type in rows[:limit]
    ]
    next_cursor = encode_cursor(["-attempt", page[-1]["id"]]) if len(rows) > limit else None
    return page, next_cursor


async def retry_delivery(session: AsyncSession, webhook_id: str, attempt_id: int) -> None:
    """Make the delivery of the attempt ``attempt_id`` (an ``id`` of the webhook's
    deliveries list) due now: a new attempt, its count kept (so a failed one that fails
    again is failed again). Pending or failed only; a delivered one is 409."""
    await begin_write(session)
    await get_webhook(session, webhook_id)
    row = (
        await session.execute(
            select(Delivery.id, Delivery.status)
            .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
            .where(
                DeliveryAttempt.id == attempt_id,
                DeliveryAttempt.webhook_id == webhook_id,
                Delivery.webhook_id == webhook_id,
            )
            .with_for_update(of=Delivery)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"No delivery {attempt_id} of webhook {webhook_id}.")
    delivery_id, status = row
    if status == DELIVERED:
        raise AlreadyDeliveredError(
            f"Delivery {attempt_id} was delivered already; it is not sent again."
        )
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(status=PENDING, next_attempt_at=utcnow())
    )
    await session.commit()
