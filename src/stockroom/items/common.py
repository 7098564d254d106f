"""What the reads and the writes of items share: the entity tag, the not-found error,
money in cents and what "low" means."""

from __future__ import annotations

from decimal import Decimal

from stockroom.errors import NotFoundError
from stockroom.http import make_etag
from stockroom.items.models import ItemRow

__all__ = ["crossed_low", "etag_of", "is_low", "not_found", "to_cents"]


def to_cents(amount: Decimal) -> int:
    """A price of the wire (a decimal with at most two places) as the cents stored."""
    return int(amount * 100)


def etag_of(item: ItemRow) -> str:
    return make_etag(item.id, item.version)


def not_found(item_id: int) -> NotFoundError:
    return NotFoundError(f"No item with id {item_id}.")


def is_low(quantity: int, reorder_point: int | None) -> bool:
    """At or below the reorder point (never without one); as ``models.LOW_STOCK_SQL``."""
    return reorder_point is not None and quantity <= reorder_point


def crossed_low(before: ItemRow, after: ItemRow) -> bool:
    """Whether a change took the item from not low to low: the ``stock.low`` event."""
    return is_low(after.quantity, after.reorder_point) and not is_low(
        before.quantity, before.reorder_point
    )
