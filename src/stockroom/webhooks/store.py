"""What the delivery queue does differently on each database, behind one interface.

The queue (:mod:`stockroom.webhooks.queue`) is the same SQL on both databases but for one
step: taking each webhook's oldest due deliveries so that no other instance takes them
too. ``_postgresql.py`` and ``_sqlite.py`` do it; ``stockroom.stores`` picks one by
``Settings.backend``, with every other store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["DeliveryStore"]


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
