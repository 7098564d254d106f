"""items: reorder points (``reorder_point``, NULL or >= 0) and the low-stock index

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_items_reorder_point_not_negative"
_INDEX = "ix_items_low_stock"
# The items at or below their reorder point (false where there is none: NULL): what
# `low_stock=true` selects, a small part of the table, so a partial index of their ids.
_LOW = "quantity <= reorder_point"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with its own CHECK in place; a table-level constraint would
        # mean rebuilding the table (and its dependants' foreign keys).
        op.execute(
            "ALTER TABLE items ADD COLUMN reorder_point INTEGER "
            f"CONSTRAINT {_CHECK} CHECK (reorder_point >= 0)"
        )
    else:
        op.add_column("items", sa.Column("reorder_point", sa.Integer(), nullable=True))
        op.create_check_constraint(op.f(_CHECK), "items", "reorder_point >= 0")
    op.create_index(
        op.f(_INDEX),
        "items",
        ["id"],
        postgresql_where=sa.text(_LOW),
        sqlite_where=sa.text(_LOW),
    )


def downgrade() -> None:
    op.drop_index(op.f(_INDEX), table_name="items")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE items DROP COLUMN reorder_point")
    else:
        op.drop_constraint(op.f(_CHECK), "items", type_="check")
        op.drop_column("items", "reorder_point")
