"""The events items and their stock write (the contract's event types)."""

__all__ = [
    "EVENT_TYPES",
    "ITEM_CREATED",
    "ITEM_DELETED",
    "ITEM_UPDATED",
    "STOCK_ADJUSTED",
    "STOCK_LOW",
]

ITEM_CREATED = "item.created"
ITEM_UPDATED = "item.updated"
ITEM_DELETED = "item.deleted"
STOCK_ADJUSTED = "stock.adjusted"
# An item went from above its reorder point (or none) to at or below it; data: the item.
STOCK_LOW = "stock.low"
EVENT_TYPES = (ITEM_CREATED, ITEM_UPDATED, ITEM_DELETED, STOCK_ADJUSTED, STOCK_LOW)
