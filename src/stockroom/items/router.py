"""HTTP endpoints of items: headers, status codes and wire schemas; the work is in ``service``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Request, Response, status
from starlette.convertors import StringConvertor, register_url_convertor

from stockroom.auth.deps import READ, WRITE, ScopedRoute
from stockroom.http import (
    ETAG_DOC,
    LOCATION_DOC,
    REPLAYED_DOC,
    Cursor,
    Limit,
    Page,
    etag_matches,
    page_response,
)
from stockroom.idempotency.deps import IdempotencyKey, answer_response, idempotent
from stockroom.idempotency.service import StoredAnswer
from stockroom.items import service
from stockroom.items.common import etag_of
from stockroom.items.deps import ItemFilterDep
from stockroom.items.models import ItemRow
from stockroom.items.schemas import (
    CountMode,
    ItemCreate,
    ItemId,
    ItemPublic,
    ItemSummary,
    ItemUpdate,
    SortKey,
    item_json,
    items_json,
    summary_json,
)
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["ITEM_PATH", "router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/items",
    tags=["items"],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)


class _ItemIdConvertor(StringConvertor):
    """An item id segment: anything (a non-integer is a 422 from validation) except the
    names of the collection's own resources, so that PATCH /items/export or
    /items/summary is a 405 (as routing says), not "export is not an integer"."""

    regex = r"(?!(?:import|export|summary)(?:/|$))[^/]+"


register_url_convertor("item_id", _ItemIdConvertor())
ITEM_PATH = "/{item_id:item_id}"
IfMatch = Annotated[
    str | None,
    Header(description="Apply only if the item's current ETag is one of these (or `*`)."),
]
_IF_NONE_MATCH = "Answer 304 (no body) if the item's ETag is one of these (or `*`)."
# GET /items/{id} reads If-None-Match itself (see get_item); declared for the document here.
_IF_NONE_MATCH_PARAMETER = {
    "name": "if-none-match",
    "in": "header",
    "required": False,
    "description": _IF_NONE_MATCH,
    "schema": {"type": "string", "title": "If-None-Match", "description": _IF_NONE_MATCH},
}


_JSON = "application/json"


def _created(item: ItemRow) -> StoredAnswer:
    return StoredAnswer.json(
        status.HTTP_201_CREATED, item_json(item), Location=f"/items/{item.id}", ETag=etag_of(item)
    )


def _item_response(item: ItemRow) -> Response:
    return Response(item_json(item), media_type=_JSON, headers={"ETag": etag_of(item)})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemPublic,
    responses={
        201: {"headers": {**LOCATION_DOC, **ETAG_DOC, **REPLAYED_DOC}},
        **problem_responses(409),
    },
    dependencies=[WRITE],
    operation_id="createItem",
)
async def create_item(
    request: Request, body: ItemCreate, idempotency_key: IdempotencyKey = None
) -> Response:
    writer = resources_of(request).stores.writer
    answer, replayed = await service.create_item(
        idempotent(request, idempotency_key), writer, body, _created
    )
    return answer_response(answer, replayed=replayed)


@router.get("", response_model=Page[ItemPublic], dependencies=[READ], operation_id="listItems")
async def list_items(
    request: Request,
    where: ItemFilterDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: SortKey = "id",
    count: CountMode = False,
) -> Response:
    page = await service.list_items(
        resources_of(request).stores.items,
        where,
        sort=sort,
        cursor=cursor,
        limit=limit,
        count=count,
    )
    if page.total is None:
        return page_response(items_json(page.items), page.next_cursor)
    return page_response(
        items_json(page.items), page.next_cursor, page.total.total, exact=page.total.exact
    )


@router.get(
    "/summary", response_model=ItemSummary, dependencies=[READ], operation_id="getItemSummary"
)
async def get_item_summary(request: Request) -> Response:
    """The catalogue's counts and stock value, for an overview."""
    summary = await service.summarize(resources_of(request).stores.items)
    return Response(summary_json(summary), media_type=_JSON)


@router.get(
    ITEM_PATH,
    response_model=ItemPublic,
    responses={
        200: {"headers": ETAG_DOC},
        304: {
            "description": "Not modified: `If-None-Match` matched the ETag.",
            "headers": ETAG_DOC,
        },
        **problem_responses(404),
    },
    dependencies=[READ],
    operation_id="getItem",
    openapi_extra={"parameters": [_IF_NONE_MATCH_PARAMETER]},
)
async def get_item(request: Request, item_id: ItemId) -> Response:
    # The most used route reads If-None-Match from the request itself, not as a header
    # parameter: each parameter FastAPI extracts costs every request (docs/async.md).
    item = await service.get_item(resources_of(request).stores.items, item_id)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, etag_of(item), weak=True):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag_of(item)})
    return _item_response(item)


@router.patch(
    ITEM_PATH,
    response_model=ItemPublic,
    responses={200: {"headers": ETAG_DOC}, **problem_responses(404, 409, 412)},
    dependencies=[WRITE],
    operation_id="updateItem",
)
async def update_item(
    request: Request,
    item_id: ItemId,
    body: Annotated[ItemUpdate, Body()],
    if_match: IfMatch = None,
) -> Response:
    stores = resources_of(request).stores
    item = await service.update_item(
        stores.database, stores.writer, item_id, body.changes(), if_match=if_match
    )
    return _item_response(item)


@router.delete(
    ITEM_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 409, 412),
    dependencies=[WRITE],
    operation_id="deleteItem",
)
async def delete_item(request: Request, item_id: ItemId, if_match: IfMatch = None) -> Response:
    stores = resources_of(request).stores
    await service.delete_item(stores.database, stores.writer, item_id, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
