"""The delivery store on SQLite: one writer at a time, no row locks."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.webhooks.models import Delivery

__all__ = ["SqliteDeliveryStore"]


class SqliteDeliveryStore:
    async def lock_due(
        self,
        session: AsyncSession,
        due: Sequence[ColumnElement[bool]],
        *,
        limit: int,
        per_webhook: int,
    ) -> Sequence[int]:
        # The claim's write transaction holds the database's write lock: no other claim
        # runs until it ends, so ranking is all there is to do.
        ranked = (
            select(
                Delivery.id,
                Delivery.next_attempt_at,
                func.row_number()
                .over(partition_by=Delivery.webhook_id, order_by=Delivery.next_attempt_at)
                .label("rank"),
            )
            .where(*due)
            .subquery()
        )
        stmt = (
            select(ranked.c.id)
            .where(ranked.c.rank <= per_webhook)
            .order_by(ranked.c.next_attempt_at)
            .limit(limit)
        )
        return (await session.scalars(stmt)).all()
