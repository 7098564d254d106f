"""Every table, imported once so that the metadata is complete (migrations, tests)."""

from stockroom.auth.models import ApiKey
from stockroom.db import Base
from stockroom.idempotency.models import IdempotencyRecord
from stockroom.items.models import Item
from stockroom.ledger.models import Adjustment

__all__ = ["Adjustment", "ApiKey", "Base", "IdempotencyRecord", "Item"]
