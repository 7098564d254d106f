"""Stock changes. Quantity changes only here, in the same transaction as its ledger row.

Invariant, for every item at every commit: the sum of its adjustments' deltas equals its
quantity, and quantity >= 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, bindparam, cast, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.db import begin_write, utcnow
from stockroom.errors import ConflictError, NotFoundError
from stockroom.events import log as events
from stockroom.http import decode_cursor, encode_cursor, invalid_cursor
from stockroom.items.models import Item
from stockroom.ledger.models import Adjustment

__all__ = [
    "MAX_QUANTITY",
    "AdjustmentPage",
    "InsufficientStockError",
    "QuantityLimitError",
    "adjust",
    "apply_adjustment",
    "list_adjustments",
    "record_initial",
]

MAX_QUANTITY = 2_147_483_647
REASON_INITIAL = "initial"

# The statements of an adjustment, built once: building the expressions again for every
# request (operators, coercions, cache keys) cost more CPU than running them.
# Core statements on the tables: the ORM's bulk UPDATE and its flush add nothing here.
_ITEMS, _ADJUSTMENTS = Item.metadata.tables["items"], Adjustment.metadata.tables["adjustments"]
_NEW_QUANTITY = cast(Item.quantity, BigInteger) + bindparam("delta")  # no integer overflow
_APPLY = (
    update(_ITEMS)
    .where(Item.id == bindparam("item_id"), _NEW_QUANTITY >= 0, _NEW_QUANTITY <= MAX_QUANTITY)
    .values(quantity=_NEW_QUANTITY, version=Item.version + 1, updated_at=bindparam("now"))
    .returning(Item.quantity)
)
_RECORD = insert(_ADJUSTMENTS).returning(Adjustment.id)


class InsufficientStockError(ConflictError):
    slug, title = "insufficient-stock", "Insufficient stock"


class QuantityLimitError(ConflictError):
    slug, title = "quantity-limit", "Quantity limit reached"


@dataclass(frozen=True, slots=True)
class AdjustmentPage:
    adjustments: Sequence[Adjustment]
    next_cursor: str | None


async def record_initial(session: AsyncSession, item: Item) -> None:
    """The ledger row (and its event) for a new item's starting stock (the item row
    already holds it)."""
    if item.quantity > 0:
        adjustment = Adjustment(
            item_id=item.id,
            delta=item.quantity,
            reason=REASON_INITIAL,
            quantity_after=item.quantity,
            created_at=item.created_at,
        )
        session.add(adjustment)
        await session.flush()
        events.record_adjustment(session, adjustment)


async def adjust(
    session: AsyncSession,
    item_id: int,
    delta: int,
    reason: str | None,
    *,
    before_commit: Callable[[Adjustment], Awaitable[None]] | None = None,
) -> Adjustment:
    """Apply one adjustment and commit. ``before_commit`` runs inside the transaction."""
    await begin_write(session)
    adjustment = await apply_adjustment(session, item_id, delta, reason)
    if before_commit is not None:
        await before_commit(adjustment)
    await session.commit()
    return adjustment


async def apply_adjustment(
    session: AsyncSession, item_id: int, delta: int, reason: str | None
) -> Adjustment:
    """Change the item's quantity by ``delta`` and write its ledger row and its
    ``stock.adjusted`` event; does not commit.

    One conditional UPDATE does the check and the change together, so concurrent
    adjustments can neither lose an update nor oversell: the database applies them one
    after another on the row, and each sees the quantity the previous one left.
    """
    now = utcnow()
    while True:
        quantity_after = (
            await session.execute(_APPLY, {"item_id": item_id, "delta": delta, "now": now})
        ).scalar_one_or_none()
        if quantity_after is not None:
            break
        # Refused: find out why, under the row lock, so the answer names a real state.
        current = await session.scalar(
            select(Item.quantity).where(Item.id == item_id).with_for_update()
        )
        if current is None:
            raise NotFoundError(f"No item with id {item_id}.")
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
    row = {
        "item_id": item_id,
        "delta": delta,
        "reason": reason,
        "quantity_after": quantity_after,
        "created_at": now,
    }
    adjustment_id = (await session.execute(_RECORD, row)).scalar_one()
    adjustment = Adjustment(id=adjustment_id, **row)
    await events.record_many(session, [events.adjustment_event(adjustment)])
    return adjustment


async def list_adjustments(
    session: AsyncSession, item_id: int, *, cursor: str | None, limit: int
) -> AdjustmentPage:
    """An item's ledger, newest first."""
    if await session.get(Item, item_id) is None:
        raise NotFoundError(f"No item with id {item_id}.")
    stmt = select(Adjustment).where(Adjustment.item_id == item_id)
    if cursor is not None:
        stmt = stmt.where(Adjustment.id < _cursor_id(decode_cursor(cursor)))
    rows = (await session.scalars(stmt.order_by(Adjustment.id.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    next_cursor = encode_cursor(["-id", page[-1].id]) if len(rows) > limit else None
    return AdjustmentPage(page, next_cursor)


def _cursor_id(payload: list[Any]) -> int:
    if len(payload) != 2 or payload[0] != "-id" or type(payload[1]) is not int:
        raise invalid_cursor()
    return payload[1]
