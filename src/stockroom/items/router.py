"""HTTP endpoints of items: headers, status codes and wire schemas; the work is in ``service``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from starlette.convertors import StringConvertor, register_url_convertor

from stockroom.auth.deps import READ, WRITE
from stockroom.deps import ReadEngineDep, SessionDep
from stockroom.errors import InvalidRequestError
from stockroom.http import (
    ETAG_HEADER,
    LOCATION_HEADER,
    REPLAYED_HEADER,
    Cursor,
    Limit,
    Page,
    etag_matches,
    json_response,
)
from stockroom.idempotency.deps import IdempotencyDep
from stockroom.idempotency.service import StoredAnswer
from stockroom.items import service
from stockroom.items.models import ItemRecord
from stockroom.items.repository import ItemFilter
from stockroom.items.schemas import (
    SEARCH_PATTERN,
    ItemCreate,
    ItemId,
    ItemPublic,
    ItemUpdate,
    Money,
    SortKey,
)
from stockroom.problems import problem_responses

__all__ = ["ITEM_PATH", "ItemFilterDep", "router"]

router = APIRouter(
    prefix="/items",
    tags=["items"],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)


class _ItemIdConvertor(StringConvertor):
    """An item id segment: anything (a non-integer is a 422 from validation) except the
    names of the collection's own resources, so that PATCH /items/export is a 405 (as
    routing says), not "export is not an integer"."""

    regex = r"(?!(?:import|export)(?:/|$))[^/]+"


register_url_convertor("item_id", _ItemIdConvertor())
ITEM_PATH = "/{item_id:item_id}"
IfMatch = Annotated[
    str | None,
    Header(description="Apply only if the item's current ETag is one of these (or `*`)."),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description="Answer 304 (no body) if the item's ETag is one of these (or `*`)."),
]
PriceBound = Annotated[Money | None, Query()]


def _public(item: ItemRecord) -> ItemPublic:
    return ItemPublic.from_item(item)


def _created(item: ItemRecord) -> StoredAnswer:
    return StoredAnswer.json(
        status.HTTP_201_CREATED,
        _public(item),
        Location=f"/items/{item.id}",
        ETag=service.etag_of(item),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemPublic,
    responses={
        201: {"headers": {**LOCATION_HEADER, **ETAG_HEADER, **REPLAYED_HEADER}},
        **problem_responses(409),
    },
    dependencies=[WRITE],
    operation_id="createItem",
)
async def create_item(
    session: SessionDep, body: ItemCreate, idempotency: IdempotencyDep
) -> Response:
    return await idempotency.execute(
        lambda before_commit: service.create_item(session, body, before_commit=before_commit),
        _created,
    )


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
        min_price_cents=None if min_price is None else service.to_cents(min_price),
        max_price_cents=None if max_price is None else service.to_cents(max_price),
        in_stock=in_stock,
    )


ItemFilterDep = Annotated[ItemFilter, Depends(item_filter)]


@router.get("", response_model=Page[ItemPublic], dependencies=[READ], operation_id="listItems")
async def list_items(
    db: ReadEngineDep,
    where: ItemFilterDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: SortKey = "id",
    count: bool = False,
) -> Response:
    page = await service.list_items(db, where, sort=sort, cursor=cursor, limit=limit, count=count)
    return json_response(
        Page(
            data=[_public(item) for item in page.items],
            next_cursor=page.next_cursor,
            total=page.total,
        )
    )


@router.get(
    ITEM_PATH,
    response_model=ItemPublic,
    responses={
        200: {"headers": ETAG_HEADER},
        304: {
            "description": "Not modified: `If-None-Match` matched the ETag.",
            "headers": ETAG_HEADER,
        },
        **problem_responses(404),
    },
    dependencies=[READ],
    operation_id="getItem",
)
async def get_item(
    db: ReadEngineDep,
    item_id: ItemId,
    if_none_match: IfNoneMatch = None,
) -> Response:
    item = await service.get_item(db, item_id)
    etag = service.etag_of(item)
    if if_none_match is not None and etag_matches(if_none_match, etag, weak=True):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return json_response(_public(item), headers={"ETag": etag})


@router.patch(
    ITEM_PATH,
    response_model=ItemPublic,
    responses={200: {"headers": ETAG_HEADER}, **problem_responses(404, 409, 412)},
    dependencies=[WRITE],
    operation_id="updateItem",
)
async def update_item(
    session: SessionDep,
    item_id: ItemId,
    body: Annotated[ItemUpdate, Body()],
    response: Response,
    if_match: IfMatch = None,
) -> ItemPublic:
    item = await service.update_item(session, item_id, body, if_match=if_match)
    response.headers["ETag"] = service.etag_of(item)
    return _public(item)


@router.delete(
    ITEM_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 409, 412),
    dependencies=[WRITE],
    operation_id="deleteItem",
)
async def delete_item(session: SessionDep, item_id: ItemId, if_match: IfMatch = None) -> None:
    await service.delete_item(session, item_id, if_match=if_match)
