"""What the delivery queue does differently on each database, behind one interface.

The queue (:mod:`stockroom.webhooks.queue`) is the same SQL on both databases but for one
step: taking each webhook's oldest due deliveries so that no other instance takes them
too. :data:`STORES` maps ``Settings.backend`` to the class that does it on that database;
the dispatcher's builder picks one at start-up (``background.event_services``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from stockroom.settings import Backend
from stockroom.webhooks._postgresql import PostgreSQLDeliveryStore
from stockroom.webhooks._sqlite import SQLiteDeliveryStore

__all__ = ["STORES", "DeliveryStore"]


class DeliveryStore(Protocol):
    async def lock_due(
        self,
        session: AsyncSession,
        due: Sequence[ColumnElement[bool]],
        *,
        limit: int,
        per_webhook: int,
    ) -> Sequence[int]:
        """The ids of up to ``limit`` deliveries that match ``due`` (conditions on
        ``Delivery``): at most ``per_webhook`` of any one webhook, its oldest due first, and
        of those the oldest due first. Called in a write transaction; until it ends, no
        other claim takes these deliveries."""
        ...


STORES: dict[Backend, type[DeliveryStore]] = {
    "postgresql": PostgreSQLDeliveryStore,
    "sqlite": SQLiteDeliveryStore,
}
