"""The stock ledger: every change of an item's quantity is an adjustment."""
