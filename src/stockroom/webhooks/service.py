"""Webhook subscriptions (the admin endpoints) and the delivery queue the dispatcher works.

Queue: the dispatcher turns each event of the log into one delivery row per matching
webhook (:func:`fan_out`), claims due deliveries for a lease (:func:`claim`), and records
each attempt's outcome (:func:`save_outcomes`). On PostgreSQL several instances share the
work: fan-out is done by whichever holds the cursor row's lock (``SKIP LOCKED``: the others
go on to sending), and claims skip rows another instance has locked, so in normal operation
each delivery is sent by one instance. A claim is a lease: if its instance dies, the
delivery becomes due again when the lease ends and another instance sends it (at least
once, as the contract says).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import (
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import UTCDateTime, begin_write, on_postgresql, utcnow
from stockroom.errors import InvalidRequestError, NotFoundError
from stockroom.events.log import Position, batch_end, between, read_after
from stockroom.events.models import Event
from stockroom.http import decode_cursor, encode_cursor, invalid_cursor
from stockroom.webhooks.models import Delivery, DeliveryAttempt, DispatchCursor, Webhook
from stockroom.webhooks.schemas import WebhookCreate
from stockroom.webhooks.security import AddressRefusedError, check_host, generate_secret

__all__ = [
    "DELIVERED",
    "FAILED",
    "FAN_OUT_BATCH",
    "PENDING",
    "Claimed",
    "Outcome",
    "backlog",
    "claim",
    "create_webhook",
    "delete_webhook",
    "fan_out",
    "get_webhook",
    "list_attempts",
    "list_webhooks",
    "release",
    "save_outcomes",
]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ALL_EVENTS = "*"
FAN_OUT_BATCH = 1000  # events a fan-out passes at most


# --- subscriptions ------------------------------------------------------------------------


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
        return dt.datetime.fromisoformat(created), webhook_id
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
        if len(payload) != 2 or payload[0] != "-attempt" or type(payload[1]) is not int:
            raise invalid_cursor()
        stmt = stmt.where(DeliveryAttempt.id < payload[1])
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


# --- the delivery queue -------------------------------------------------------------------


async def fan_out(session: AsyncSession) -> int:
    """Turn the next events of the log into deliveries, one per matching webhook, and move
    the dispatcher's cursor past them, in one transaction. Returns how many events were
    passed (0 also when another instance holds the cursor now)."""
    # A look without the lock first: on SQLite the lock is the database's write lock.
    start = (await session.execute(select(DispatchCursor.txid, DispatchCursor.seq))).one()
    if not await read_after(session, Position(*start), limit=1, bodies=False):
        await session.rollback()
        return 0
    await session.rollback()
    await begin_write(session)
    row = (
        await session.execute(
            select(DispatchCursor.txid, DispatchCursor.seq)
            .where(DispatchCursor.id == 1)
            .with_for_update(skip_locked=True)
        )
    ).first()
    if row is None:  # another instance is at it
        await session.rollback()
        return 0
    cursor = Position(*row)
    batch = await batch_end(session, cursor, limit=FAN_OUT_BATCH)
    if batch is None:
        await session.rollback()
        return 0
    end, count = batch
    # One delivery per event of the batch and matching webhook, made by the database: no
    # row of the batch comes into Python. A webhook gets the events committed after it was
    # made, of the types it asked for ("*": all).
    now = bindparam("now", utcnow(), type_=UTCDateTime())
    comma = literal(",")
    wanted = or_(
        Webhook.events == ALL_EVENTS,
        (comma + Webhook.events + comma).contains(comma + Event.type + comma),
    )
    matches = (
        select(Webhook.id, Event.seq, literal(PENDING), literal(0), now, now)
        .select_from(Event)
        .join(Webhook, and_(Event.created_at >= Webhook.created_at, wanted))
        .where(between(cursor, end))
    )
    columns = ["webhook_id", "event_seq", "status", "attempts", "next_attempt_at", "created_at"]
    await session.execute(insert(Delivery).from_select(columns, matches))
    await session.execute(
        update(DispatchCursor).where(DispatchCursor.id == 1).values(txid=end.txid, seq=end.seq)
    )
    await session.commit()
    return int(count)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this instance holds the lease of, with what sending it needs."""

    delivery_id: int
    attempts: int  # before this one
    event_id: str
    event_type: str
    event_created_at: dt.datetime
    body: str
    webhook_id: str
    url: str
    secret: str


async def claim(
    session: AsyncSession,
    limit: int,
    lease: dt.timedelta,
    *,
    per_webhook: int,
    skip: Collection[str] = (),
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries for ``lease`` (they are due again after it), at
    most ``per_webhook`` of any one webhook and none of the webhooks in ``skip``: one
    webhook's backlog does not crowd out the others'. Oldest due first."""
    now = utcnow()
    is_due = [Delivery.status == PENDING, Delivery.next_attempt_at <= now]
    if skip:
        is_due.append(Delivery.webhook_id.not_in(skip))
    # A look without the lock first: on SQLite the lock is the database's write lock.
    if await session.scalar(select(Delivery.id).where(*is_due).limit(1)) is None:
        await session.rollback()
        return []
    await session.rollback()
    await begin_write(session)
    if on_postgresql(session):
        # Per webhook, its oldest due rows through the (webhook_id, status,
        # next_attempt_at) index, skipping rows another instance is claiming.
        oldest = (
            select(Delivery.id, Delivery.next_attempt_at)
            .where(Delivery.webhook_id == Webhook.id, *is_due)
            .order_by(Delivery.next_attempt_at)
            .limit(per_webhook)
            .with_for_update(skip_locked=True)
            .lateral()
        )
        due = (
            select(oldest.c.id)
            .select_from(Webhook)
            .join(oldest, true())
            .order_by(oldest.c.next_attempt_at)
            .limit(limit)
        )
    else:
        # SQLite: one writer at a time (the claim holds the write lock), no row locks.
        ranked = (
            select(
                Delivery.id,
                Delivery.next_attempt_at,
                func.row_number()
                .over(partition_by=Delivery.webhook_id, order_by=Delivery.next_attempt_at)
                .label("rank"),
            )
            .where(*is_due)
            .subquery()
        )
        due = (
            select(ranked.c.id)
            .where(ranked.c.rank <= per_webhook)
            .order_by(ranked.c.next_attempt_at)
            .limit(limit)
        )
    ids = (await session.scalars(due)).all()
    if not ids:
        await session.rollback()
        return []
    await session.execute(
        update(Delivery).where(Delivery.id.in_(ids)).values(next_attempt_at=now + lease)
    )
    rows = await session.execute(
        select(
            Delivery.id,
            Delivery.attempts,
            Event.id,
            Event.type,
            Event.created_at,
            Event.body,
            Webhook.id,
            Webhook.url,
            Webhook.secret,
        )
        .join(Event, Event.seq == Delivery.event_seq)
        .join(Webhook, Webhook.id == Delivery.webhook_id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.event_seq)
    )
    claimed = [Claimed(*row) for row in rows]
    await session.commit()
    return claimed


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result and what it makes of its delivery."""

    claimed: Claimed
    status: str  # the delivery's new status
    response_status: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: dt.datetime | None
    at: dt.datetime


_SAVE_DELIVERY = (
    update(Delivery.__table__)  # type: ignore[arg-type]
    .where(
        Delivery.__table__.c.id == bindparam("b_id"),
        # Unless another instance took it over after our lease ran out.
        Delivery.__table__.c.attempts == bindparam("b_before"),
    )
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
    )
)


async def save_outcomes(session: AsyncSession, outcomes: Sequence[Outcome]) -> None:
    """Record a batch of attempts and their deliveries' new state, in one transaction."""
    if not outcomes:
        return
    await begin_write(session)
    # A delivery can be gone by now (its webhook deleted, its event pruned): its attempt is
    # not recorded. Without this, the attempt's foreign key would fail the whole batch, and
    # the dispatcher would retry that batch forever, recording nothing more. FOR KEY SHARE
    # (PostgreSQL) keeps the others from being deleted until this commits.
    ids = sorted({o.claimed.delivery_id for o in outcomes})
    live = set(
        (
            await session.scalars(
                select(Delivery.id).where(Delivery.id.in_(ids)).with_for_update(key_share=True)
            )
        ).all()
    )
    outcomes = [o for o in outcomes if o.claimed.delivery_id in live]
    if not outcomes:
        await session.commit()
        return
    await session.execute(
        _SAVE_DELIVERY,
        [
            {
                "b_id": o.claimed.delivery_id,
                "b_before": o.claimed.attempts,
                "b_status": o.status,
                "b_attempts": o.claimed.attempts + 1,
                "b_next": o.next_attempt_at or o.at,
            }
            for o in outcomes
        ],
    )
    await session.execute(
        insert(DeliveryAttempt),
        [
            {
                "delivery_id": o.claimed.delivery_id,
                "webhook_id": o.claimed.webhook_id,
                "attempt": o.claimed.attempts + 1,
                "status": o.status,
                "response_status": o.response_status,
                "error": o.error,
                "duration_ms": o.duration_ms,
                "next_attempt_at": o.next_attempt_at,
                "created_at": o.at,
            }
            for o in outcomes
        ],
    )
    await session.commit()


async def release(session: AsyncSession, claimed: Sequence[Claimed]) -> None:
    """Give back deliveries that were claimed but not sent (shutdown): due now, for any
    instance, with no attempt counted."""
    if not claimed:
        return
    await begin_write(session)
    await session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_([c.delivery_id for c in claimed]),
            Delivery.status == PENDING,
        )
        .values(next_attempt_at=utcnow())
    )
    await session.commit()


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_age_seconds: float


async def backlog(session: AsyncSession) -> Backlog:
    """Pending deliveries and the age of the oldest event waiting for one."""
    count, oldest = (
        await session.execute(
            select(func.count(), func.min(Event.created_at))
            .select_from(Delivery)
            .join(Event, Event.seq == Delivery.event_seq)
            .where(Delivery.status == PENDING)
        )
    ).one()
    age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
    return Backlog(pending=count, oldest_age_seconds=max(0.0, age))


def _aware(moment: dt.datetime) -> dt.datetime:
    # func.min() loses the column type on SQLite, so the value comes back as text or naive.
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
