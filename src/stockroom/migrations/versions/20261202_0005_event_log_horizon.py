"""events: the log's horizon as a view, the same query on every database

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Readers take events below the horizon only (see events/log.py). On PostgreSQL it is the
# oldest transaction still running, as of the reading statement's own snapshot; on SQLite,
# where writers take turns and txid is 0, every committed event is final. Defined here, per
# database, so that the code reading the log is one query for both.
_POSTGRESQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS txid"
_SQLITE = "SELECT 9223372036854775807 AS txid"


def upgrade() -> None:
    horizon = _POSTGRESQL if op.get_bind().dialect.name == "postgresql" else _SQLITE
    op.execute(f"CREATE VIEW event_log_horizon AS {horizon}")


def downgrade() -> None:
    op.execute("DROP VIEW event_log_horizon")
