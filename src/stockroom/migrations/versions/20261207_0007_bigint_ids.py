"""items, adjustments: 64-bit ids (``items.id``, ``adjustments.id``, ``adjustments.item_id``)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# At 1,000 adjustments a second a 32-bit ledger id runs out in under 25 days. No other
# column holds an item's or an adjustment's id (events and stored answers carry them inside
# their JSON text), so these three columns and the two sequences are all there is.
#
# PostgreSQL only: SQLite's INTEGER is 64-bit already (and only "INTEGER PRIMARY KEY" is the
# rowid), so there is nothing to do there.
#
# Each ALTER COLUMN ... TYPE rewrites its table and rebuilds its indexes under an ACCESS
# EXCLUSIVE lock: reads and writes of items and adjustments wait until the migration commits
# (see docs/operations.md, "64-bit ids", for how long). The foreign key is dropped first and
# added back once, after both sides are bigint: otherwise each ALTER would check it again
# against the whole ledger.
_FK = "fk_adjustments_item_id_items"
_ADD_FK = (
    f"ALTER TABLE adjustments ADD CONSTRAINT {_FK} FOREIGN KEY (item_id) "
    "REFERENCES items (id) ON DELETE CASCADE"
)
# The ids come from the SERIAL columns' own sequences (0001, 0002): "AS integer" sequences,
# whose maximum (2**31 - 1) follows the type they are altered to.
_SEQUENCES = ("items", "adjustments")


def _retype(kind: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE adjustments DROP CONSTRAINT {_FK}")
    op.execute(
        f"ALTER TABLE adjustments ALTER COLUMN id TYPE {kind}, ALTER COLUMN item_id TYPE {kind}"
    )
    op.execute(f"ALTER TABLE items ALTER COLUMN id TYPE {kind}")
    op.execute(_ADD_FK)
    for table in _SEQUENCES:
        sequence = (
            op.get_bind()
            .exec_driver_sql(f"SELECT pg_get_serial_sequence('{table}', 'id')")
            .scalar_one()
        )
        op.execute(f"ALTER SEQUENCE {sequence} AS {kind}")


def upgrade() -> None:
    _retype("bigint")


def downgrade() -> None:
    # Fails (and changes nothing) if an id or a sequence is already past 2**31 - 1.
    _retype("integer")
