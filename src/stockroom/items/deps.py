"""The list filters, an input shared by the list and the export, as a dependency (the
collaborators of a route come from ``stockroom.resources.resources_of``, not from here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from stockroom.errors import InvalidRequestError
from stockroom.items.common import to_cents
from stockroom.items.repository import ItemFilter
from stockroom.items.schemas import SEARCH_PATTERN, Money

__all__ = ["ItemFilterDep"]

PriceBound = Annotated[Money | None, Query()]


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
    low_stock: Annotated[
        bool | None,
        Query(
            description="true: items at or below their reorder point; false: the others "
            "(no reorder point, or above it)."
        ),
    ] = None,
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
        low_stock=low_stock,
    )


ItemFilterDep = Annotated[ItemFilter, Depends(item_filter)]
