"""HTTP endpoints of webhooks (``admin`` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from stockroom.auth.deps import ADMIN, ScopedRoute
from stockroom.deps import SessionDep
from stockroom.http import LOCATION_HEADER, Cursor, Limit, Page
from stockroom.problems import problem_responses
from stockroom.webhooks import service
from stockroom.webhooks.models import Webhook
from stockroom.webhooks.schemas import AttemptPublic, WebhookCreate, WebhookCreated, WebhookPublic

__all__ = ["router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/webhooks",
    tags=["webhooks"],
    dependencies=[ADMIN],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)
WebhookId = Annotated[str, Path(max_length=64, description="The webhook's id.")]


def _public(webhook: Webhook) -> WebhookPublic:
    return WebhookPublic(
        id=webhook.id,
        url=webhook.url,
        events=webhook.events.split(","),
        created_at=webhook.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={201: {"headers": LOCATION_HEADER}},
    operation_id="createWebhook",
)
async def create_webhook(
    request: Request, session: SessionDep, body: WebhookCreate, response: Response
) -> WebhookCreated:
    """Subscribe a URL to events. The answer holds the signing secret, shown only here."""
    allow_private = request.app.state.settings.webhook_allow_private
    webhook = await service.create_webhook(session, body, allow_private=allow_private)
    response.headers["Location"] = f"/webhooks/{webhook.id}"
    return WebhookCreated(**_public(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=Page[WebhookPublic], operation_id="listWebhooks")
async def list_webhooks(
    session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> Page[WebhookPublic]:
    """Every webhook, oldest first (no secrets)."""
    webhooks, next_cursor = await service.list_webhooks(session, cursor=cursor, limit=limit)
    return Page(data=[_public(w) for w in webhooks], next_cursor=next_cursor)


@router.get(
    "/{webhook_id}",
    response_model=WebhookPublic,
    responses=problem_responses(404),
    operation_id="getWebhook",
)
async def get_webhook(session: SessionDep, webhook_id: WebhookId) -> WebhookPublic:
    return _public(await service.get_webhook(session, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    operation_id="deleteWebhook",
)
async def delete_webhook(session: SessionDep, webhook_id: WebhookId) -> Response:
    """Remove the webhook; its pending deliveries are dropped with it."""
    await service.delete_webhook(session, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[AttemptPublic],
    responses=problem_responses(404),
    operation_id="listDeliveries",
)
async def list_deliveries(
    session: SessionDep, webhook_id: WebhookId, limit: Limit = 50, cursor: Cursor = None
) -> Page[AttemptPublic]:
    """The webhook's delivery attempts, newest first."""
    attempts, next_cursor = await service.list_attempts(
        session, webhook_id, cursor=cursor, limit=limit
    )
    return Page(data=[AttemptPublic.model_validate(a) for a in attempts], next_cursor=next_cursor)
