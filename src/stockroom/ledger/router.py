"""HTTP endpoints of the ledger: ``/items/{id}/adjustments``."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.responses import Response

from stockroom.auth.deps import READ, WRITE
from stockroom.deps import SessionDep
from stockroom.http import REPLAYED_HEADER, Cursor, Limit, Page
from stockroom.idempotency.deps import IdempotencyDep
from stockroom.idempotency.service import StoredAnswer
from stockroom.items.schemas import ItemId
from stockroom.ledger import service
from stockroom.ledger.models import Adjustment
from stockroom.ledger.schemas import AdjustmentCreate, AdjustmentPublic
from stockroom.problems import problem_responses

__all__ = ["router"]

router = APIRouter(
    prefix="/items/{item_id}/adjustments",
    tags=["stock"],
    responses=problem_responses(400, 401, 403, 404, 413, 422, 500, 503),
)


def _public(adjustment: Adjustment) -> AdjustmentPublic:
    return AdjustmentPublic.model_validate(adjustment, from_attributes=True)


def _created(adjustment: Adjustment) -> StoredAnswer:
    return StoredAnswer.json(status.HTTP_201_CREATED, _public(adjustment))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AdjustmentPublic,
    responses={201: {"headers": REPLAYED_HEADER}, **problem_responses(409)},
    dependencies=[WRITE],
    operation_id="createAdjustment",
)
async def create_adjustment(
    session: SessionDep, item_id: ItemId, body: AdjustmentCreate, idempotency: IdempotencyDep
) -> Response:
    """Change an item's stock. Removing more than is in stock is a 409 `insufficient-stock`
    whose `available` member says how much there was; nothing changes."""
    return await idempotency.execute(
        lambda before_commit: service.adjust(
            session, item_id, body.delta, body.reason, before_commit=before_commit
        ),
        _created,
    )


@router.get(
    "",
    response_model=Page[AdjustmentPublic],
    dependencies=[READ],
    operation_id="listAdjustments",
)
async def list_adjustments(
    session: SessionDep,
    item_id: ItemId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[AdjustmentPublic]:
    """The item's ledger, newest first."""
    page = await service.list_adjustments(session, item_id, cursor=cursor, limit=limit)
    return Page(data=[_public(a) for a in page.adjustments], next_cursor=page.next_cursor)
