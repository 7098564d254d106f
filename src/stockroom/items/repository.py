"""The list filters and keyset pagination of items, once, for the list endpoint and the
export, on both databases.

Statements are built from a *shape* (which filters are present, the sort, whether a cursor
is given) with named bind parameters, and each shape is compiled once per process by the
store that runs it; a request only computes the parameters' values (:meth:`Listing.params`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Float,
    Select,
    Text,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    tablesample,
    true,
    tuple_,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.util import ClauseAdapter

from stockroom.http import cursor_int, invalid_cursor
from stockroom.items.models import LOW_STOCK_SQL, Item, fold_name

__all__ = [
    "COUNT_CAP",
    "ITEM_TABLE_COLUMNS",
    "SAMPLE_ROWS",
    "SUMMARY_SQL",
    "SUMMARY_VALUE_SPLIT",
    "ItemFilter",
    "Keyset",
    "Listing",
    "Shape",
]

ITEM_TABLE_COLUMNS = tuple(Item.__table__.columns)
# items.id is a 64-bit column (bigint on PostgreSQL, since migration 0007): the driver
# refuses a larger value.
_MAX_ID = 2**63 - 1

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
    low_stock: bool | None = None

    def params(self) -> dict[str, Any]:
        """The bind parameters of the filters that are present."""
        values: dict[str, Any] = {}
        if self.q:
            values["q"] = "%" + _escape_like(fold_name(self.q)) + "%"
        if self.min_price_cents is not None:
            values["min_price"] = self.min_price_cents
        if self.max_price_cents is not None:
            values["max_price"] = self.max_price_cents
        return values

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.q:
            pattern: BindParameter[str] = bindparam("q")
            clauses.append(SEARCH_TEXT.like(pattern, escape="\\"))
        if self.min_price_cents is not None:
            clauses.append(Item.price_cents >= bindparam("min_price"))
        if self.max_price_cents is not None:
            clauses.append(Item.price_cents <= bindparam("max_price"))
        if self.in_stock is not None:
            # In the statement's text, not a parameter: in_stock is part of the shape.
            zero: ColumnElement[int] = literal_column("0")
            clauses.append(Item.quantity > zero if self.in_stock else Item.quantity == zero)
        if self.low_stock is not None:
            # The partial index's own predicate, so that PostgreSQL uses it for true.
            clauses.append(_LOW if self.low_stock else _NOT_LOW)
        return clauses

    @property
    def plan_depends_on_values(self) -> bool:
        """Whether the best plan depends on the parameters' values (how many rows `q` or a
        price range matches: a walk of the sort's index, or the trigram or price index and a
        sort). PostgreSQL may settle on one generic plan for a prepared statement after five
        executions; for these shapes the store asks it to plan each time."""
        return bool(self.q) or self.min_price_cents is not None or self.max_price_cents is not None

    @property
    def shape(self) -> tuple[bool, bool, bool, bool | None, bool | None]:
        return (
            bool(self.q),
            self.min_price_cents is not None,
            self.max_price_cents is not None,
            self.in_stock,
            self.low_stock,
        )


class _Bytewise(FunctionElement[str]):
    """Its argument, compared byte for byte: PostgreSQL's "C" collation (as name_key's, and
    the search index's expression); SQLite compares text so by default."""

    type = Text()
    inherit_cache = True
    name = "bytewise"


@compiles(_Bytewise)
def _bytewise(element: _Bytewise, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(_Bytewise, "postgresql")
def _bytewise_postgresql(element: _Bytewise, compiler: Any, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


# What `q` matches: the sku (lower-cased) and the name (name_key, folded) in one text, one
# line apart. Neither, nor `q`, may hold a line break (schemas: Sku, NAME_PATTERN,
# SEARCH_PATTERN), so a match never spans both: it is `lower(sku) LIKE q OR name_key LIKE q`,
# which one trigram index answers on PostgreSQL (migration 0009, whose expression this is).
SEARCH_TEXT: ColumnElement[str] = _Bytewise(
    func.lower(Item.sku, type_=Text()).concat(literal_column("'\n'")).concat(Item.name_key)
)


# Low: at or below the reorder point; not low: no reorder point, or above it.
_LOW: ColumnElement[bool] = literal_column(LOW_STOCK_SQL)
_NOT_LOW: ColumnElement[bool] = or_(
    Item.reorder_point.is_(None), Item.quantity > Item.reorder_point
)

# The summary, one pass over the table, the same SQL on both databases. The stock value is
# summed in two parts (price's millions of cents, and the rest), each product within 64
# bits, so that no database overflows or rounds it; the caller adds them up.
SUMMARY_SQL = f"""
SELECT count(*), coalesce(sum(quantity), 0),
       coalesce(sum(price_cents / 1000000 * quantity), 0),
       coalesce(sum(price_cents % 1000000 * quantity), 0),
       count(*) FILTER (WHERE quantity = 0),
       count(*) FILTER (WHERE {LOW_STOCK_SQL})
FROM items"""
SUMMARY_VALUE_SPLIT = 1_000_000

# count=true: an exact number up to COUNT_CAP matches (the count stops reading at the one
# after); above it, an estimate from a sample of about SAMPLE_ROWS rows (PostgreSQL), which
# the envelope says is one (`"total_exact": false`). count=exact always counts every match.
# The cap bounds the count's cost where no index narrows the filter: reaching 10,001 of
# 5,000,000 items matching `q=red` (10% of them) read 100,000 rows, 72 ms; 1,001, 7 ms.
COUNT_CAP = 1_000
SAMPLE_ROWS = 10_000


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class Keyset:
    """A sort order (``price`` or ``-price``)."""

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

    def cursor_payload(self, item: Any) -> list[Any]:
        """The cursor of the page that starts after ``item`` (a row of the table)."""
        value = getattr(item, _SORT_COLUMNS[self.key].key)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        return [self.sort, value, item.id]

    def after(self) -> ColumnElement[bool]:
        """The condition for rows after a cursor (bind parameters ``after_value`` and
        ``after_id``)."""
        column = _SORT_COLUMNS[self.key]
        last_id: BindParameter[int] = bindparam("after_id")
        if self.key == "id":
            return Item.id < last_id if self.descending else Item.id > last_id
        value = bindparam("after_value", type_=column.type)
        # A row comparison, not `column > value OR (column = value AND id > last)`: both
        # databases read it as a range of the (column, id) index that starts at the cursor.
        # The OR form made PostgreSQL walk the index from its start and filter: a page half-way
        # through 1,000,000 items sorted by name took 590 ms instead of a few (bench/scale.py).
        row, after = tuple_(column, Item.id), tuple_(value, last_id)
        return row < after if self.descending else row > after

    def after_params(self, payload: list[Any]) -> dict[str, Any]:
        """The bind parameters of a cursor's ``payload``; a foreign cursor is a 422."""
        if len(payload) != 3 or payload[0] != self.sort:
            raise invalid_cursor()
        params = {"after_id": cursor_int(payload[2], maximum=_MAX_ID)}
        if self.key != "id":
            params["after_value"] = self._parse_value(payload[1])
        else:
            cursor_int(payload[1], maximum=_MAX_ID)
        return params

    def _parse_value(self, value: Any) -> Any:
        if self.key == "price":
            return cursor_int(value)
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


Shape = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Listing:
    """One list (or export) query: filters, order, where the previous page stopped, and
    the page size (None: every row, for the export)."""

    where: ItemFilter
    keyset: Keyset
    after: list[Any] | None = None
    limit: int | None = None

    @property
    def shape(self) -> Shape:
        """What decides the statement's text (not its parameters' values)."""
        return (*self.where.shape, self.keyset.sort, self.after is not None, self.limit is None)

    def params(self) -> dict[str, Any]:
        params = self.where.params()
        if self.after is not None:
            params.update(self.keyset.after_params(self.after))
        if self.limit is not None:
            params["limit"] = self.limit + 1  # one more: is there a next page?
        return params

    def select(self, columns: Sequence[Any] = ()) -> Select[Any]:
        """The statement of this shape (``columns``: the table's, or expressions over
        them), with named bind parameters."""
        clauses = self.where.clauses()
        if self.after is not None:
            clauses.append(self.keyset.after())
        stmt = (
            select(*(columns or ITEM_TABLE_COLUMNS))
            .where(and_(true(), *clauses))
            .order_by(*self.keyset.order_by())
        )
        return stmt if self.limit is None else stmt.limit(bindparam("limit"))

    def count(self) -> Select[Any]:
        clauses = self.where.clauses()
        return select(func.count()).select_from(Item).where(and_(true(), *clauses))

    def capped_count(self) -> Select[Any]:
        """The number of matches if at most COUNT_CAP, else COUNT_CAP + 1: it stops reading
        there."""
        clauses = self.where.clauses()
        matches: Select[Any] = select(literal_column("1")).select_from(Item)
        # The cap in the text, not a parameter: the same for every request of the shape.
        cap: Any = literal_column(str(COUNT_CAP + 1))
        matches = matches.where(and_(true(), *clauses)).limit(cap)
        return select(func.count()).select_from(matches.subquery())

    def sampled_count(self) -> Select[int, int]:
        """(matches, rows) in a sample of the table's pages (PostgreSQL's TABLESAMPLE SYSTEM,
        bind parameter ``percent``), the same pages every time (REPEATABLE): an estimate's
        numbers, which do not change between two requests of an unchanged table."""
        sample = tablesample(
            Item.__table__,
            func.system(bindparam("percent", type_=Float())),
            seed=literal_column("0"),
        )
        matches = ClauseAdapter(sample).traverse(and_(true(), *self.where.clauses()))
        return select(func.count().filter(matches), func.count()).select_from(sample)
