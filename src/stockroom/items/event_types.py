"""The events items and their stock write (the contract's event types)."""

__all__ = ["EVENT_TYPES", "ITEM_CREATED", "ITEM_DELETED", "ITEM_UPDATED", "STOCK_ADJUSTED"]

ITEM_CREATED = "item.created"
ITEM_UPDATED = "item.updated"
ITEM_DELETED = "item.deleted"
STOCK_ADJUSTED = "stock.adjusted"
EVENT_TYPES = (ITEM_CREATED, ITEM_UPDATED, ITEM_DELETED, STOCK_ADJUSTED)
