"""deliveries: index for per-webhook claims

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_webhook_deliveries_webhook_id_status_next_attempt_at"),
        "webhook_deliveries",
        ["webhook_id", "status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_webhook_deliveries_webhook_id_status_next_attempt_at"),
        table_name="webhook_deliveries",
    )
