"""HTTP endpoints of the ledger: ``/items/{id}/adjustments``."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from starlette.responses import Response

from stockroom.auth.deps import READ, WRITE, ScopedRoute
from stockroom.http import REPLAYED_DOC, Cursor, Limit, Page, page_response
from stockroom.idempotency.deps import IdempotencyKey, answer_response, idempotent
from stockroom.idempotency.service import StoredAnswer
from stockroom.items.models import AdjustmentRow
from stockroom.items.schemas import AdjustmentPublic, ItemId, adjustment_json, adjustments_json
from stockroom.ledger import service
from stockroom.ledger.schemas import AdjustmentCreate
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/items/{item_id}/adjustments",
    tags=["stock"],
    responses=problem_responses(400, 401, 403, 404, 413, 422, 500, 503),
)


def _created(adjustment: AdjustmentRow) -> StoredAnswer:
    return StoredAnswer.json(status.HTTP_201_CREATED, adjustment_json(adjustment))


@router.post(
    "",
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
    "",
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
