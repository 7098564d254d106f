"""items

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "name_key",
            sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_items_quantity_not_negative")),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_items_price_not_negative")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_items_version_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("sku", name=op.f("uq_items_sku")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_items_name_key_id"), "items", ["name_key", "id"])
    op.create_index(op.f("ix_items_price_cents_id"), "items", ["price_cents", "id"])
    op.create_index(op.f("ix_items_created_at_id"), "items", ["created_at", "id"])
    op.create_index(op.f("ix_items_updated_at_id"), "items", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_items_updated_at_id"), table_name="items")
    op.drop_index(op.f("ix_items_created_at_id"), table_name="items")
    op.drop_index(op.f("ix_items_price_cents_id"), table_name="items")
    op.drop_index(op.f("ix_items_name_key_id"), table_name="items")
    op.drop_table("items")
