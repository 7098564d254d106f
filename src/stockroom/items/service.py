"""What the items endpoints (and the command line) do, one call each: reads through the
database's store (``items.store``, which holds a connection only while its statements run),
writes through ``items.writer`` in a transaction this module opens, or the request's
:class:`~stockroom.idempotency.service.UnitOfWork` for a POST."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from stockroom.database import Database
from stockroom.http import decode_cursor, encode_cursor
from stockroom.idempotency.service import StoredAnswer, UnitOfWork
from stockroom.items.common import not_found
from stockroom.items.models import Count, ItemRow, Summary
from stockroom.items.repository import ItemFilter, Keyset, Listing
from stockroom.items.schemas import ItemCreate
from stockroom.items.store import ItemStore
from stockroom.items.writer import ItemWriter

__all__ = [
    "ItemPage",
    "create_item",
    "delete_item",
    "get_item",
    "list_items",
    "summarize",
    "update_item",
]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: Sequence[ItemRow]
    next_cursor: str | None
    total: Count | None


async def get_item(store: ItemStore[Any], item_id: int) -> ItemRow:
    item = await store.get(item_id)
    if item is None:
        raise not_found(item_id)
    return item


async def list_items(
    store: ItemStore[Any],
    where: ItemFilter,
    *,
    sort: str,
    cursor: str | None,
    limit: int,
    count: bool | Literal["exact"],
) -> ItemPage:
    keyset = Keyset(sort)
    after = decode_cursor(cursor) if cursor is not None else None
    listing = Listing(where, keyset, after, limit)
    rows = await store.page(listing)
    items, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(keyset.cursor_payload(items[-1])) if more else None
    total = None
    if count and after is None and not more:
        total = Count(len(items), True)  # the first page holds every match: that is the count
    elif count:
        total = await store.count(listing, exact=count == "exact")
    return ItemPage(items, next_cursor, total)


async def summarize(store: ItemStore[Any]) -> Summary:
    """The catalogue's counts and stock value, in one statement."""
    return await store.summary()


async def create_item(
    work: UnitOfWork[C],
    writer: ItemWriter[C],
    data: ItemCreate,
    render: Callable[[ItemRow], StoredAnswer],
) -> tuple[StoredAnswer, bool]:
    """The new item, its starting stock's ledger row and their events in one transaction
    (with the idempotency key's record, if any); the answer and whether it is a replay."""
    return await work.run(lambda connection: writer.create(connection, data), render)


async def update_item(
    database: Database[C],
    writer: ItemWriter[C],
    item_id: int,
    changes: dict[str, Any],
    *,
    if_match: str | None,
) -> ItemRow:
    async with database.transaction() as connection:
        return await writer.update(connection, item_id, changes, if_match=if_match)


async def delete_item(
    database: Database[C], writer: ItemWriter[C], item_id: int, *, if_match: str | None
) -> None:
    async with database.transaction() as connection:
        await writer.delete(connection, item_id, if_match=if_match)
