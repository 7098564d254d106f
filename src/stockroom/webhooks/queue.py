"""The delivery queue the dispatcher works.

The dispatcher turns each event of the log into one delivery row per matching webhook
(:func:`fan_out`), claims due deliveries for a lease (:func:`claim`), records each attempt's
outcome (:func:`save_outcomes`) and, when it stops, gives back what it did not send
(:func:`release`). On PostgreSQL several instances share the work: fan-out is done by
whichever holds the cursor row's lock (``SKIP LOCKED``: the others go on to sending), and
claims skip rows another instance has locked, so in normal operation each delivery is sent
by one instance. A claim is a lease: if its instance dies, the delivery becomes due again
when the lease ends and another instance sends it (at least once, as the contract says).

The one step whose SQL differs by database, which due deliveries a claim takes, is the
:class:`~stockroom.webhooks.store.DeliveryStore` passed to :func:`claim`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import UTCDateTime, begin_write, utcnow
from stockroom.events.log import BETWEEN, Position, batch_end, between_params, read_after
from stockroom.events.models import Event
from stockroom.webhooks.models import Delivery, DeliveryAttempt, DispatchCursor, Webhook
from stockroom.webhooks.store import DeliveryStore

__all__ = [
    "DELIVERED",
    "FAILED",
    "FAN_OUT_BATCH",
    "PENDING",
    "Backlog",
    "Claimed",
    "FanOut",
    "Outcome",
    "backlog",
    "claim",
    "fan_out",
    "release",
    "save_outcomes",
]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ALL_EVENTS = "*"
FAN_OUT_BATCH = 1000  # events a fan-out passes at most


@dataclass(frozen=True, slots=True)
class FanOut:
    """What a fan-out did: events passed (0 also when another instance holds the cursor
    now), and deliveries made of them."""

    events: int = 0
    deliveries: int = 0


# The fan-out's statements, built once (see events.log).
_CURSOR = select(DispatchCursor.txid, DispatchCursor.seq)
_LOCK_CURSOR = _CURSOR.where(DispatchCursor.id == 1).with_for_update(skip_locked=True)
# Core tables, not the ORM classes: executed with parameters, an ORM insert or update
# would be a bulk one, by primary key.
_MOVE_CURSOR = (
    update(DispatchCursor.__table__)  # type: ignore[arg-type]
    .where(DispatchCursor.__table__.c.id == 1)
    .values(txid=bindparam("end_txid"), seq=bindparam("end_seq"))
)
# One delivery per event of the batch and matching webhook, made by the database: no row of
# the batch comes into Python. A webhook gets the events committed after it was made, of the
# types it asked for ("*": all).
_now = bindparam("now", type_=UTCDateTime())
_comma = literal(",")
_MAKE_DELIVERIES = insert(Delivery.__table__).from_select(  # type: ignore[arg-type]
    ["webhook_id", "event_seq", "status", "attempts", "next_attempt_at", "created_at"],
    select(Webhook.id, Event.seq, literal(PENDING), literal(0), _now, _now)
    .select_from(Event)
    .join(
        Webhook,
        and_(
            Event.created_at >= Webhook.created_at,
            or_(
                Webhook.events == ALL_EVENTS,
                (_comma + Webhook.events + _comma).contains(_comma + Event.type + _comma),
            ),
        ),
    )
    .where(BETWEEN),
)


async def fan_out(session: AsyncSession) -> FanOut:
    """Turn the next events of the log into deliveries, one per matching webhook, and move
    the dispatcher's cursor past them, in one transaction."""
    # A look without the lock first: on SQLite the lock is the database's write lock.
    start = (await session.execute(_CURSOR)).one()
    if not await read_after(session, Position(*start), limit=1, bodies=False):
        await session.rollback()
        return FanOut()
    await session.rollback()
    await begin_write(session)
    row = (await session.execute(_LOCK_CURSOR)).first()
    if row is None:  # another instance is at it
        await session.rollback()
        return FanOut()
    cursor = Position(*row)
    batch = await batch_end(session, cursor, limit=FAN_OUT_BATCH)
    if batch is None:
        await session.rollback()
        return FanOut()
    end, count = batch
    made = await session.execute(_MAKE_DELIVERIES, {**between_params(cursor, end), "now": utcnow()})
    await session.execute(_MOVE_CURSOR, {"end_txid": end.txid, "end_seq": end.seq})
    await session.commit()
    return FanOut(int(count), int(made.rowcount))  # type: ignore[attr-defined]


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
    store: DeliveryStore,
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
    ids = await store.lock_due(session, is_due, limit=limit, per_webhook=per_webhook)
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
