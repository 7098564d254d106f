"""items: one trigram index for search, on the sku and the name together (PostgreSQL)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `q` searches the sku and the name. 0008 indexed each (two GIN indexes); a search read both
# and joined the results (a BitmapOr): a number, in both an item's sku and its name, twice.
# One index on the two, one line apart (no sku, name or `q` holds a line break, so no match
# spans both), is read once: a `q` matching a few of 5,000,000 items took 1.4 ms instead of
# 2.6 (bench/scale.py's "q few", EXPLAIN ANALYZE), and a write updates one index, not two.
# The expression is items.repository.SEARCH_TEXT's, as PostgreSQL compiles it.
SEARCH_INDEX = "ix_items_search_trgm"
SEARCH_EXPRESSION = """((lower(sku) || E'\\n' || name_key) COLLATE "C") gin_trgm_ops"""
_0008_INDEXES = {
    "ix_items_name_key_trgm": "name_key gin_trgm_ops",
    "ix_items_sku_trgm": "lower(sku) gin_trgm_ops",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # IF NOT EXISTS: an operator may have built it beforehand, CONCURRENTLY, without holding
    # writes back (docs/operations.md, "One search index (migration 0009)").
    op.execute(
        f"CREATE INDEX IF NOT EXISTS {SEARCH_INDEX} ON items USING gin ({SEARCH_EXPRESSION})"
    )
    for name in _0008_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    # The new expression's statistics: without them PostgreSQL guesses how many items a
    # search matches (0008 says what that cost).
    op.execute("ANALYZE items")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, column in _0008_INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON items USING gin ({column})")
    op.execute(f"DROP INDEX {SEARCH_INDEX}")
    op.execute("ANALYZE items")
