"""The ledger: a stock change and an item's history of them.

A stock change is one transaction, opened here (:func:`adjust_stock`, through the request's
:class:`~stockroom.idempotency.service.UnitOfWork`): the idempotency key's lock and stored
answer, the item's row, its ledger row and their event commit together or not at all. The
rows themselves are written by ``items.writer``, the one writer of ``items`` and
``adjustments`` (an import changes stock too, through the same rules)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from stockroom.http import cursor_int, decode_cursor, encode_cursor, invalid_cursor
from stockroom.idempotency.service import StoredAnswer, UnitOfWork
from stockroom.items.common import not_found
from stockroom.items.models import AdjustmentRow
from stockroom.items.store import ItemStore
from stockroom.items.writer import ItemWriter
from stockroom.ledger.schemas import AdjustmentCreate

__all__ = [
    "AdjustmentPage",
    "QuantityHistory",
    "adjust_stock",
    "list_adjustments",
    "quantity_history",
]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class AdjustmentPage:
    adjustments: Sequence[AdjustmentRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QuantityHistory:
    """An item's quantity over time, oldest first: Unix times and the quantity after each
    change; ``last_id`` the newest ledger row in it (a client adds later changes past it)."""

    times: list[float]
    quantities: list[int]
    last_id: int | None
    next_cursor: str | None


async def adjust_stock(
    work: UnitOfWork[C],
    writer: ItemWriter[C],
    item_id: int,
    change: AdjustmentCreate,
    render: Callable[[AdjustmentRow], StoredAnswer],
) -> tuple[StoredAnswer, bool]:
    """Apply ``change`` to the item's stock (409 on an oversell, nothing changed): the
    answer, and whether it is the replay of an earlier request with the same key."""
    return await work.run(
        lambda connection: writer.adjust(connection, item_id, change.delta, change.reason),
        render,
    )


async def list_adjustments(
    store: ItemStore[Any], item_id: int, *, cursor: str | None, limit: int
) -> AdjustmentPage:
    """An item's ledger, newest first."""
    before = _cursor_id(decode_cursor(cursor)) if cursor is not None else None
    rows = await store.adjustments(item_id, before, limit + 1)
    if rows is None:
        raise not_found(item_id)
    page = rows[:limit]
    next_cursor = encode_cursor(["-id", page[-1].id]) if len(rows) > limit else None
    return AdjustmentPage(page, next_cursor)


async def quantity_history(
    store: ItemStore[Any], item_id: int, *, cursor: str | None, limit: int
) -> QuantityHistory:
    """The newest ``limit`` points of an item's quantity (older ones by ``next_cursor``)."""
    before = _cursor_id(decode_cursor(cursor)) if cursor is not None else None
    rows = await store.history(item_id, before, limit + 1)
    if rows is None:
        raise not_found(item_id)
    points = rows[:limit]
    next_cursor = encode_cursor(["-id", points[-1][0]]) if len(rows) > limit else None
    return QuantityHistory(
        times=[point[1] for point in reversed(points)],
        quantities=[point[2] for point in reversed(points)],
        last_id=points[0][0] if points else None,
        next_cursor=next_cursor,
    )


def _cursor_id(payload: list[Any]) -> int:
    if len(payload) != 2 or payload[0] != "-id":
        raise invalid_cursor()
    return cursor_int(payload[1])
