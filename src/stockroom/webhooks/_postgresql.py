"""The delivery store on PostgreSQL: several instances claim side by side."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.webhooks.models import Delivery, Webhook

__all__ = ["PostgresDeliveryStore"]


class PostgresDeliveryStore:
    async def lock_due(
        self,
        session: AsyncSession,
        due: Sequence[ColumnElement[bool]],
        *,
        limit: int,
        per_webhook: int,
    ) -> Sequence[int]:
        # Per webhook, its oldest due rows through the (webhook_id, status,
        # next_attempt_at) index, skipping rows another instance is claiming.
        oldest = (
            select(Delivery.id, Delivery.next_attempt_at)
            .where(Delivery.webhook_id == Webhook.id, *due)
            .order_by(Delivery.next_attempt_at)
            .limit(per_webhook)
            .with_for_update(skip_locked=True)
            .lateral()
        )
        stmt = (
            select(oldest.c.id)
            .select_from(Webhook)
            .join(oldest, true())
            .order_by(oldest.c.next_attempt_at)
            .limit(limit)
        )
        return (await session.scalars(stmt)).all()
