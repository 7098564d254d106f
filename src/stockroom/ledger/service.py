"""The ledger's reads. Every stock change is made by ``items.writer`` (the one writer of
``items`` and ``adjustments``); this package is the ledger's HTTP surface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stockroom.http import cursor_int, decode_cursor, encode_cursor, invalid_cursor
from stockroom.items.models import AdjustmentRow
from stockroom.items.store import ItemStore
from stockroom.items.writer import not_found

__all__ = ["AdjustmentPage", "list_adjustments"]


@dataclass(frozen=True, slots=True)
class AdjustmentPage:
    adjustments: Sequence[AdjustmentRow]
    next_cursor: str | None


async def list_adjustments(
    store: ItemStore, item_id: int, *, cursor: str | None, limit: int
) -> AdjustmentPage:
    """An item's ledger, newest first."""
    before = _cursor_id(decode_cursor(cursor)) if cursor is not None else None
    rows = await store.adjustments(item_id, before, limit + 1)
    if rows is None:
        raise not_found(item_id)
    page = rows[:limit]
    next_cursor = encode_cursor(["-id", page[-1].id]) if len(rows) > limit else None
    return AdjustmentPage(page, next_cursor)


def _cursor_id(payload: list[Any]) -> int:
    if len(payload) != 2 or payload[0] != "-id":
        raise invalid_cursor()
    return cursor_int(payload[1])
