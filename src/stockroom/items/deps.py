"""The items store and writer of the process (made in the lifespan) as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from stockroom.errors import InvalidRequestError
from stockroom.items.repository import ItemFilter
from stockroom.items.schemas import SEARCH_PATTERN, Money
from stockroom.items.store import ItemStore
from stockroom.items.writer import ItemWriter, to_cents

__all__ = ["ItemFilterDep", "ItemStoreDep", "ItemWriterDep", "store_of", "writer_of"]

PriceBound = Annotated[Money | None, Query()]


def store_of(request: Request) -> ItemStore:
    """The process's item store (a plain call on the hottest routes: see
    ``idempotency.deps.idempotent``)."""
    store: ItemStore = request.app.state.stores.items
    return store


def writer_of(request: Request) -> ItemWriter:
    """The process's item writer (a plain call: see ``idempotency.deps.idempotent``)."""
    writer: ItemWriter = request.app.state.stores.writer
    return writer


ItemStoreDep = Annotated[ItemStore, Depends(store_of)]
ItemWriterDep = Annotated[ItemWriter, Depends(writer_of)]


async def item_filter(
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=SEARCH_PATTERN,
            description="Case-insensitive part of sku or name.",
        ),
    ] = None,
    min_price: PriceBound = None,
    max_price: PriceBound = None,
    in_stock: bool | None = None,
) -> ItemFilter:
    """The list filters, shared by the list and the export."""
    if min_price is not None and max_price is not None and min_price > max_price:
        raise InvalidRequestError(
            "min_price is greater than max_price.", loc=("query", "min_price")
        )
    return ItemFilter(
        q=q,
        min_price_cents=None if min_price is None else to_cents(min_price),
        max_price_cents=None if max_price is None else to_cents(max_price),
        in_stock=in_stock,
    )


ItemFilterDep = Annotated[ItemFilter, Depends(item_filter)]
