"""HTTP endpoints of the ledger: ``/items/{id}/adjustments``."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, status
from starlette.responses import Response

from stockroom.auth.deps import READ, WRITE, ScopedRoute
from stockroom.http import REPLAYED_DOC, Cursor, Limit, Page, page_response
from stockroom.idempotency.deps import IdempotencyKey, answer_response, idempotent
from stockroom.idempotency.service import StoredAnswer
from stockroom.items.models import AdjustmentRow
from stockroom.items.schemas import AdjustmentPublic, ItemId, adjustment_json, adjustments_json
from stockroom.ledger import service
from stockroom.ledger.schemas import HISTORY_LIMIT, AdjustmentCreate, QuantityHistoryPublic
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/items/{item_id}",
    tags=["stock"],
    responses=problem_responses(400, 401, 403, 404, 413, 422, 500, 503),
)


def _created(adjustment: AdjustmentRow) -> StoredAnswer:
    return StoredAnswer.json(status.HTTP_201_CREATED, adjustment_json(adjustment))


@router.post(
    "/adjustments",
    status_code=status.HTTP_201_CREATED,
    response_model=AdjustmentPublic,
    responses={201: {"headers": REPLAYED_DOC}, **problem_responses(409)},
    dependencies=[WRITE],
    operation_id="createAdjustment",
)
async def create_adjustment(
    request: Request,
    item_id: ItemId,
    body: AdjustmentCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Change an item's stock. Removing more than is in stock is a 409 `insufficient-stock`
    whose `available` member says how much there was; nothing changes."""
    writer = resources_of(request).stores.writer
    answer, replayed = await service.adjust_stock(
        idempotent(request, idempotency_key), writer, item_id, body, _created
    )
    return answer_response(answer, replayed=replayed)


@router.get(
    "/adjustments",
    response_model=Page[AdjustmentPublic],
    dependencies=[READ],
    operation_id="listAdjustments",
)
async def list_adjustments(
    request: Request,
    item_id: ItemId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """The item's ledger, newest first."""
    store = resources_of(request).stores.items
    page = await service.list_adjustments(store, item_id, cursor=cursor, limit=limit)
    return page_response(adjustments_json(page.adjustments), page.next_cursor)


@router.get(
    "/history",
    response_model=QuantityHistoryPublic,
    dependencies=[READ],
    operation_id="getQuantityHistory",
)
async def quantity_history(
    request: Request,
    item_id: ItemId,
    limit: Annotated[
        int, Query(ge=1, le=HISTORY_LIMIT, description="How many of the newest changes.")
    ] = 10_000,
    cursor: Cursor = None,
) -> Response:
    """The item's quantity over time, from its ledger (`quantity_after` of each change),
    as two columns ready for a chart: the newest `limit` changes, oldest first, in one
    answer (the ledger list pages 500 rows at most). Older changes by `next_cursor`."""
    store = resources_of(request).stores.items
    history = await service.quantity_history(store, item_id, cursor=cursor, limit=limit)
    body = {
        "times": history.times,
        "quantities": history.quantities,
        "last_id": history.last_id,
        "next_cursor": history.next_cursor,
    }
    return Response(orjson.dumps(body), media_type="application/json")
