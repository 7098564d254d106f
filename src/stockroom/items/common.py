"""What the reads and the writes of items share: the entity tag, the not-found error and
money in cents."""

from __future__ import annotations

from decimal import Decimal

from stockroom.errors import NotFoundError
from stockroom.http import make_etag
from stockroom.items.models import ItemRow

__all__ = ["etag_of", "not_found", "to_cents"]


def to_cents(amount: Decimal) -> int:
    """A price of the wire (a decimal with at most two places) as the cents stored."""
    return int(amount * 100)


def etag_of(item: ItemRow) -> str:
    return make_etag(item.id, item.version)


def not_found(item_id: int) -> NotFoundError:
    return NotFoundError(f"No item with id {item_id}.")
