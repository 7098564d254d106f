"""HTTP endpoints of webhooks (``admin`` scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import TypeAdapter

from stockroom.auth.deps import ADMIN, ScopedRoute
from stockroom.http import LOCATION_DOC, Cursor, Limit, Page, page_response
from stockroom.problems import problem_responses
from stockroom.resources import resources_of
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
DeliveryId = Annotated[
    int,
    Path(
        ge=1,
        le=2**63 - 1,
        description="The `id` of any row of the delivery in `GET /webhooks/{id}/deliveries` "
        "(each row is one attempt of a delivery).",
    ),
]


_WEBHOOKS = TypeAdapter(list[WebhookPublic])
_ATTEMPTS = TypeAdapter(list[AttemptPublic])


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
    responses={201: {"headers": LOCATION_DOC}},
    operation_id="createWebhook",
)
async def create_webhook(
    request: Request, body: WebhookCreate, response: Response
) -> WebhookCreated:
    """Subscribe a URL to events. The answer holds the signing secret, shown only here."""
    resources = resources_of(request)
    allow_private = resources.settings.webhook_allow_private
    async with resources.sessions() as session:
        webhook = await service.create_webhook(session, body, allow_private=allow_private)
    response.headers["Location"] = f"/webhooks/{webhook.id}"
    return WebhookCreated(**_public(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=Page[WebhookPublic], operation_id="listWebhooks")
async def list_webhooks(request: Request, limit: Limit = 50, cursor: Cursor = None) -> Response:
    """Every webhook, oldest first (no secrets)."""
    async with resources_of(request).sessions() as session:
        webhooks, next_cursor = await service.list_webhooks(session, cursor=cursor, limit=limit)
    return page_response(_WEBHOOKS.dump_json([_public(w) for w in webhooks]), next_cursor)


@router.get(
    "/{webhook_id}",
    response_model=WebhookPublic,
    responses=problem_responses(404),
    operation_id="getWebhook",
)
async def get_webhook(request: Request, webhook_id: WebhookId) -> WebhookPublic:
    async with resources_of(request).sessions() as session:
        return _public(await service.get_webhook(session, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    operation_id="deleteWebhook",
)
async def delete_webhook(request: Request, webhook_id: WebhookId) -> Response:
    """Remove the webhook; its pending deliveries are dropped with it."""
    async with resources_of(request).sessions() as session:
        await service.delete_webhook(session, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[AttemptPublic],
    responses=problem_responses(404),
    operation_id="listDeliveries",
)
async def list_deliveries(
    request: Request, webhook_id: WebhookId, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    """The webhook's delivery attempts, newest first."""
    async with resources_of(request).sessions() as session:
        attempts, next_cursor = await service.list_attempts(
            session, webhook_id, cursor=cursor, limit=limit
        )
    data = _ATTEMPTS.dump_json([AttemptPublic.model_validate(a) for a in attempts])
    return page_response(data, next_cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    responses={
        202: {"description": "The delivery is due now; its next attempt joins the list."},
        **problem_responses(404, 409),
    },
    operation_id="retryDelivery",
)
async def retry_delivery(
    request: Request, webhook_id: WebhookId, delivery_id: DeliveryId
) -> Response:
    """Send a pending or failed delivery again now (one more attempt; a delivered one is
    409). The dispatcher makes the attempt within moments; the deliveries list shows it."""
    resources = resources_of(request)
    async with resources.sessions() as session:
        await service.retry_delivery(session, webhook_id, delivery_id)
    resources.wakeup.wake()
    return Response(status_code=status.HTTP_202_ACCEPTED)
