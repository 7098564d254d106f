"""items: trigram indexes for search, the catalogue's totals kept by triggers (PostgreSQL)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy.exc import DBAPIError

from stockroom.migrations import MigrationRefusedError

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL only (SQLite, the embedded default for small catalogues, keeps scanning: see
# docs/scaling.md). These objects are not in the models; stockroom.migrations.MIGRATION_ONLY
# names them for the schema comparison.
#
# 1. Search. `q` is `lower(sku) LIKE '%q%' OR name_key LIKE '%q%'`; without an index every
#    search read the whole table (300-430 ms at 1,000,000 items, bench/scale.py). pg_trgm's
#    GIN indexes answer LIKE with a pattern of three or more characters; shorter ones still
#    scan (docs/api.md says so).
# 2. Totals. GET /items/summary and an unfiltered count read every row (200 ms and 112 ms at
#    1,000,000 items). Triggers add what each statement changed to `item_totals` as a row of
#    differences (inserted, never updated: no row that concurrent writers wait for), in the
#    same transaction, so the rows' sums are the catalogue's totals in every snapshot; the
#    server folds them into one row now and then (items.totals).
_EXTENSION_REFUSED = (
    "migration 0008 needs the pg_trgm extension, which this role may not create: have the "
    "database's owner run `CREATE EXTENSION pg_trgm;` in it, then migrate again"
)
_TRIGRAM_INDEXES = {
    "ix_items_name_key_trgm": "name_key gin_trgm_ops",
    "ix_items_sku_trgm": "lower(sku) gin_trgm_ops",
}
_TOTALS_FUNCTION = """
CREATE FUNCTION stockroom_item_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO item_totals
    SELECT count(*), coalesce(sum(quantity), 0), coalesce(sum(price_cents::numeric * quantity), 0),
           count(*) FILTER (WHERE quantity = 0), count(*) FILTER (WHERE quantity <= reorder_point)
    FROM new_rows HAVING count(*) > 0;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO item_totals
    SELECT -count(*), -coalesce(sum(quantity), 0),
           -coalesce(sum(price_cents::numeric * quantity), 0),
           -count(*) FILTER (WHERE quantity = 0), -count(*) FILTER (WHERE quantity <= reorder_point)
    FROM old_rows HAVING count(*) > 0;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO item_totals
    SELECT 0, d.units, d.value_cents, d.out_of_stock, d.low_stock
    FROM (SELECT coalesce(sum(s * quantity), 0) AS units,
                 coalesce(sum(s * price_cents::numeric * quantity), 0) AS value_cents,
                 coalesce(sum(s) FILTER (WHERE quantity = 0), 0) AS out_of_stock,
                 coalesce(sum(s) FILTER (WHERE quantity <= reorder_point), 0) AS low_stock
          FROM (SELECT 1 AS s, quantity, price_cents, reorder_point FROM new_rows
                UNION ALL
                SELECT -1, quantity, price_cents, reorder_point FROM old_rows) AS r) AS d
    WHERE d.units <> 0 OR d.value_cents <> 0 OR d.out_of_stock <> 0 OR d.low_stock <> 0;
  ELSE -- TRUNCATE
    DELETE FROM item_totals;
  END IF;
  RETURN NULL;
END
$$"""
_TRIGGERS = {
    "stockroom_item_totals_insert": "AFTER INSERT ON items REFERENCING NEW TABLE AS new_rows",
    "stockroom_item_totals_update": (
        "AFTER UPDATE ON items REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    ),
    "stockroom_item_totals_delete": "AFTER DELETE ON items REFERENCING OLD TABLE AS old_rows",
    "stockroom_item_totals_truncate": "AFTER TRUNCATE ON items",
}


def _create_extension() -> None:
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").scalar():
        return
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner, or a role with
    # CREATE on it, may create it. In a savepoint: a refusal must not end the transaction
    # before the message below is raised.
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql("CREATE EXTENSION pg_trgm")
    except DBAPIError as error:
        savepoint.rollback()
        raise MigrationRefusedError(_EXTENSION_REFUSED) from error
    savepoint.commit()


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _create_extension()
    for name, column in _TRIGRAM_INDEXES.items():
        # IF NOT EXISTS: an operator may have built them beforehand, CONCURRENTLY, without
        # holding writes back (docs/operations.md, "Migration 0008").
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON items USING gin ({column})")
    # Statistics of lower(sku), the new index's expression: without them PostgreSQL guesses
    # that a search matches 0.8% of the items and walks the id index through the whole
    # table for a `q` that matches none (5 s at 5,000,000 items, until autovacuum analyses).
    op.execute("ANALYZE items")
    op.execute(
        "CREATE TABLE item_totals (items bigint NOT NULL, units bigint NOT NULL, "
        "value_cents numeric NOT NULL, out_of_stock bigint NOT NULL, low_stock bigint NOT NULL)"
    )
    op.execute(_TOTALS_FUNCTION)
    for name, when in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT "
            "EXECUTE FUNCTION stockroom_item_totals()"
        )
    # The triggers' lock on items (CREATE TRIGGER's) is held until this migration commits:
    # no write can slip between the count below and the first trigger's row.
    op.execute(
        "INSERT INTO item_totals SELECT count(*), coalesce(sum(quantity), 0), "
        "coalesce(sum(price_cents::numeric * quantity), 0), "
        "count(*) FILTER (WHERE quantity = 0), count(*) FILTER (WHERE quantity <= reorder_point) "
        "FROM items"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON items")
    op.execute("DROP FUNCTION stockroom_item_totals()")
    op.execute("DROP TABLE item_totals")
    for name in _TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX {name}")
    # The extension stays: other objects of the database may use it.
