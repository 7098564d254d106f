"""Item use cases. Each function that writes owns its transaction and commits before it
returns, so a failed commit is an error response, never a silent 2xx. Reads take the read
engine and hold a connection only while their statements run (``db.read``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from stockroom.db import begin_write, is_unique_violation, read, utcnow
from stockroom.errors import ConflictError, DuplicateError, NotFoundError, PreconditionFailedError
from stockroom.events import log as events
from stockroom.http import decode_cursor, encode_cursor, etag_matches, make_etag
from stockroom.items.models import Item, ItemRecord, fold_name
from stockroom.items.repository import ItemFilter, ItemReads, ItemRepository, Keyset
from stockroom.items.schemas import ItemCreate, ItemUpdate
from stockroom.ledger import service as ledger

__all__ = [
    "ItemPage",
    "StockNotZeroError",
    "create_item",
    "delete_item",
    "etag_of",
    "get_item",
    "list_items",
    "to_cents",
    "update_item",
]


class StockNotZeroError(ConflictError):
    slug, title = "stock-not-zero", "Item still in stock"


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: Sequence[ItemRecord]
    next_cursor: str | None
    total: int | None


def to_cents(amount: Decimal) -> int:
    return int(amount * 100)


def etag_of(item: ItemRecord) -> str:
    return make_etag(item.id, item.version)


async def get_item(db: AsyncEngine, item_id: int) -> ItemRecord:
    item = await read(db, lambda connection: ItemReads(connection).get(item_id))
    if item is None:
        raise _not_found(item_id)
    return item


async def create_item(
    session: AsyncSession,
    data: ItemCreate,
    *,
    before_commit: Callable[[Item], Awaitable[None]] | None = None,
) -> Item:
    """Create an item; a starting quantity is written to the ledger as ``initial``.
    Events: ``item.created``, then ``stock.adjusted`` for a starting quantity."""
    await begin_write(session)
    now = utcnow()
    item = Item(
        sku=data.sku,
        name=data.name,
        name_key=fold_name(data.name),
        description=data.description,
        price_cents=to_cents(data.price),
        quantity=data.quantity,
        version=1,
        created_at=now,
        updated_at=now,
    )
    async with _unique_sku(session, data.sku):
        await ItemRepository(session).add(item)
    events.record_item(session, events.ITEM_CREATED, item)
    await ledger.record_initial(session, item)
    if before_commit is not None:
        await before_commit(item)
    await session.commit()
    return item


async def update_item(
    session: AsyncSession, item_id: int, data: ItemUpdate, *, if_match: str | None
) -> Item:
    await begin_write(session)
    item = await _locked(session, item_id, if_match)
    changed = _apply(item, data.changes())
    if not changed:
        await session.commit()  # ends the transaction (and the row lock), keeps `item` loaded
        return item
    item.version += 1
    item.updated_at = utcnow()
    events.record_item(session, events.ITEM_UPDATED, item)
    async with _unique_sku(session, item.sku):
        await session.flush()
        await session.commit()
    return item


async def delete_item(session: AsyncSession, item_id: int, *, if_match: str | None) -> None:
    await begin_write(session)
    item = await _locked(session, item_id, if_match)
    if item.quantity != 0:
        raise StockNotZeroError(
            f"Item {item_id} still has {item.quantity} in stock; adjust it to 0 before "
            "deleting it, so that the ledger accounts for the stock that left.",
            quantity=item.quantity,
        )
    await ItemRepository(session).delete(item)
    events.record_item_deleted(session, item)
    await session.commit()


async def list_items(
    db: AsyncEngine,
    where: ItemFilter,
    *,
    sort: str,
    cursor: str | None,
    limit: int,
    count: bool,
) -> ItemPage:
    keyset = Keyset(sort)
    after = decode_cursor(cursor) if cursor is not None else None

    async def query(connection: AsyncConnection) -> ItemPage:
        reads = ItemReads(connection)
        rows = await reads.page(where, keyset, after, limit)
        items, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(keyset.cursor_payload(items[-1])) if more else None
        total = await reads.count(where) if count else None
        return ItemPage(items, next_cursor, total)

    return await read(db, query)


async def _locked(session: AsyncSession, item_id: int, if_match: str | None) -> Item:
    """The item, locked for this transaction, after checking ``If-Match``."""
    item = await ItemRepository(session).get_for_update(item_id)
    if item is None:
        raise _not_found(item_id)
    if if_match is not None and not etag_matches(if_match, etag_of(item), weak=False):
        raise PreconditionFailedError(
            f"The item has changed: its current ETag is {etag_of(item)}.",
            headers={"ETag": etag_of(item)},
        )
    return item


def _apply(item: Item, changes: dict[str, Any]) -> bool:
    """Copy the requested changes onto ``item``; whether anything really changed."""
    if "price" in changes:
        changes["price_cents"] = to_cents(changes.pop("price"))
    if "name" in changes:
        changes["name_key"] = fold_name(changes["name"])
    changed = False
    for field, value in changes.items():
        if getattr(item, field) != value:
            setattr(item, field, value)
            changed = True
    return changed


def _not_found(item_id: int) -> NotFoundError:
    return NotFoundError(f"No item with id {item_id}.")


@asynccontextmanager
async def _unique_sku(session: AsyncSession, sku: str) -> AsyncIterator[None]:
    """Turns a unique violation on ``sku`` (also one lost in a race) into a 409."""
    try:
        yield
    except IntegrityError as exc:
        await session.rollback()
        if is_unique_violation(exc):
            raise DuplicateError(f"An item with sku {sku!r} already exists.") from None
        raise
