"""Queries on items. The list filters and keyset pagination live here, once, for the list
endpoint and (later) the export."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from stockroom.http import invalid_cursor
from stockroom.items.models import Item, ItemRecord, fold_name

__all__ = ["ItemFilter", "ItemReads", "ItemRepository", "Keyset"]

# Sort key (as the API names it) -> column.
_SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "id": Item.id,
    "name": Item.name_key,
    "price": Item.price_cents,
    "created_at": Item.created_at,
    "updated_at": Item.updated_at,
}


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """What a list or an export selects."""

    q: str | None = None
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.q:
            pattern = "%" + _escape_like(fold_name(self.q)) + "%"
            clauses.append(
                or_(
                    func.lower(Item.sku).like(pattern, escape="\\"),
                    Item.name_key.like(pattern, escape="\\"),
                )
            )
        if self.min_price_cents is not None:
            clauses.append(Item.price_cents >= self.min_price_cents)
        if self.max_price_cents is not None:
            clauses.append(Item.price_cents <= self.max_price_cents)
        if self.in_stock is not None:
            clauses.append(Item.quantity > 0 if self.in_stock else Item.quantity == 0)
        return clauses


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class Keyset:
    """A sort order (``price`` or ``-price``) and where the previous page stopped."""

    sort: str

    @property
    def key(self) -> str:
        return self.sort.removeprefix("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    def order_by(self) -> list[Any]:
        columns = [_SORT_COLUMNS[self.key], Item.id] if self.key != "id" else [Item.id]
        return [c.desc() for c in columns] if self.descending else [c.asc() for c in columns]

    def cursor_payload(self, item: ItemRecord) -> list[Any]:
        """The cursor of the page that starts after ``item``."""
        value = getattr(item, _SORT_COLUMNS[self.key].key)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        return [self.sort, value, item.id]

    def after(self, payload: list[Any]) -> ColumnElement[bool]:
        """The condition for rows after the cursor ``payload``; a foreign cursor is a 422."""
        if len(payload) != 3 or payload[0] != self.sort or not _is_int(payload[2]):
            raise invalid_cursor()
        value, last_id = self._parse_value(payload[1]), int(payload[2])
        column = _SORT_COLUMNS[self.key]
        if self.key == "id":
            return Item.id < last_id if self.descending else Item.id > last_id
        if self.descending:
            return or_(column < value, and_(column == value, Item.id < last_id))
        return or_(column > value, and_(column == value, Item.id > last_id))

    def _parse_value(self, value: Any) -> Any:
        if self.key in ("id", "price"):
            if not _is_int(value):
                raise invalid_cursor()
            return value
        if not isinstance(value, str):
            raise invalid_cursor()
        if self.key == "name":
            return value
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise invalid_cursor() from None
        if parsed.tzinfo is None:
            raise invalid_cursor()
        return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


_COLUMNS = tuple(Item.__table__.columns)
_BY_ID = select(*_COLUMNS).where(Item.id == bindparam("item_id"))


def _select(
    where: ItemFilter, keyset: Keyset, after: list[Any] | None, columns: Sequence[Any] = ()
) -> Select[Any]:
    clauses = where.clauses()
    if after is not None:
        clauses.append(keyset.after(after))
    return select(*(columns or _COLUMNS)).where(and_(true(), *clauses)).order_by(*keyset.order_by())


class ItemReads:
    """Reads of items as plain rows of the table, on a connection: the hot paths (an item
    by id, a list page) need no session, no transaction and no ORM objects."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def get(self, item_id: int) -> ItemRecord | None:
        return (await self.connection.execute(_BY_ID, {"item_id": item_id})).first()

    async def page(
        self, where: ItemFilter, keyset: Keyset, after: list[Any] | None, limit: int
    ) -> Sequence[ItemRecord]:
        stmt = _select(where, keyset, after).limit(limit + 1)
        rows: Sequence[ItemRecord] = (await self.connection.execute(stmt)).all()
        return rows

    async def count(self, where: ItemFilter) -> int:
        stmt = select(func.count()).select_from(Item).where(and_(true(), *where.clauses()))
        return int((await self.connection.execute(stmt)).scalar_one())


class ItemRepository:
    """Thin data access for items in a write transaction; the service owns it."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_for_update(self, item_id: int) -> Item | None:
        # FOR UPDATE on PostgreSQL; SQLite ignores it (its write lock is already held).
        stmt = select(Item).where(Item.id == item_id).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def add(self, item: Item) -> Item:
        self.session.add(item)
        await self.session.flush()
        return item

    async def delete(self, item: Item) -> None:
        await self.session.delete(item)
        await self.session.flush()

    def export_select(
        self, where: ItemFilter, keyset: Keyset, columns: Sequence[Any] = ()
    ) -> Select[Any]:
        """The same selection and order as the list, as plain rows (no ORM objects) of the
        table's columns, or of ``columns`` (expressions over them)."""
        return _select(where, keyset, None, columns)
