"""Files: streaming CSV / NDJSON import and export of items."""
