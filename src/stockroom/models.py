"""Every table, imported once so that the metadata is complete (migrations, tests)."""

from stockroom.auth.models import ApiKey
from stockroom.db import Base
from stockroom.events.models import Event
from stockroom.idempotency.models import IdempotencyRecord
from stockroom.items.models import Adjustment, Item
from stockroom.webhooks.models import Delivery, DeliveryAttempt, DispatchCursor, Webhook

__all__ = [
    "Adjustment",
    "ApiKey",
    "Base",
    "Delivery",
    "DeliveryAttempt",
    "DispatchCursor",
    "Event",
    "IdempotencyRecord",
    "Item",
    "Webhook",
]
