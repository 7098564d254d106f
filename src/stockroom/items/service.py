"""Reads of items. Writes are ``items.writer``'s; both go through the database's store
(``items.store``), which holds a connection only while its statements run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stockroom.http import decode_cursor, encode_cursor
from stockroom.items.models import ItemRow
from stockroom.items.repository import ItemFilter, Keyset, Listing
from stockroom.items.store import ItemStore
from stockroom.items.writer import not_found

__all__ = ["ItemPage", "get_item", "list_items"]


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: Sequence[ItemRow]
    next_cursor: str | None
    total: int | None


async def get_item(store: ItemStore, item_id: int) -> ItemRow:
    item = await store.get(item_id)
    if item is None:
        raise not_found(item_id)
    return item


async def list_items(
    store: ItemStore,
    where: ItemFilter,
    *,
    sort: str,
    cursor: str | None,
    limit: int,
    count: bool,
) -> ItemPage:
    keyset = Keyset(sort)
    after = decode_cursor(cursor) if cursor is not None else None
    listing = Listing(where, keyset, after, limit)
    rows = await store.page(listing)
    items, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(keyset.cursor_payload(items[-1])) if more else None
    total = await store.count(listing) if count else None
    return ItemPage(items, next_cursor, total)
