"""PostgreSQL: the catalogue's totals and the counts of a list, without reading every row.

Migration 0008's triggers add what each statement on ``items`` changed to ``item_totals``
as a row of differences; their sums are the totals, exact in every snapshot. The server folds
the rows into one now and then (:data:`FOLD`), so that reading them stays a few rows.

``count=true`` is exact where that is cheap: from the totals when the filters are only
``in_stock`` or ``low_stock``, or by counting when at most ``COUNT_CAP`` rows match (the
count stops at the one after); otherwise an estimate from a sample of the table's pages,
which the envelope says is one. ``count=exact`` counts every match.
"""

from __future__ import annotations

from typing import Any

from stockroom.items.models import Count, Summary
from stockroom.items.repository import COUNT_CAP, SAMPLE_ROWS, ItemFilter

__all__ = [
    "CUSTOM_PLANS",
    "CUSTOM_SERIAL_PLANS",
    "FOLD",
    "TOTALS",
    "estimate",
    "matches_in_totals",
    "sample_percent",
    "summary_of",
    "totals_answer",
]

TOTALS = (
    "SELECT coalesce(sum(items), 0)::bigint, coalesce(sum(units), 0)::bigint, "
    "coalesce(sum(value_cents), 0), coalesce(sum(out_of_stock), 0)::bigint, "
    "coalesce(sum(low_stock), 0)::bigint FROM item_totals"
)
# The rows folded into one: each row is deleted once (a concurrent fold waits for the rows
# this one locked, then finds them gone) and its numbers go into the new row.
FOLD = """
WITH gone AS (DELETE FROM item_totals RETURNING *)
INSERT INTO item_totals
SELECT sum(items), sum(units), sum(value_cents), sum(out_of_stock), sum(low_stock)
FROM gone HAVING count(*) > 0"""
# For the list's statements whose plan depends on their values (ItemFilter.
# plan_depends_on_values), in the read's transaction (one round trip: the simple protocol).
# No parallel workers for a page or a capped count: starting them cost more than they saved
# (`q` with a price range at 5,000,000 items: a walk of the id index 25-42 ms with two
# workers, 8 ms without, EXPLAIN ANALYZE); count=exact, which reads every match, keeps them.
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"
CUSTOM_SERIAL_PLANS = f"{CUSTOM_PLANS}; SET LOCAL max_parallel_workers_per_gather = 0"


def summary_of(record: Any) -> Summary:
    items, units, value_cents, out, low = record
    return Summary(items, units, int(value_cents), out, low)


def totals_answer(where: ItemFilter) -> bool:
    """Whether the totals know the number of matches (no filter, or one stock filter)."""
    return not where.plan_depends_on_values and (where.in_stock is None or where.low_stock is None)


def matches_in_totals(where: ItemFilter, totals: Summary) -> int:
    """The number of matches of a filter the totals answer (:func:`totals_answer`)."""
    if where.in_stock is not None:
        return totals.items - totals.out_of_stock if where.in_stock else totals.out_of_stock
    if where.low_stock is not None:
        return totals.low_stock if where.low_stock else totals.items - totals.low_stock
    return totals.items


def sample_percent(rows: int) -> float:
    """The share of the table's pages that holds about SAMPLE_ROWS rows."""
    return min(100.0, 100.0 * SAMPLE_ROWS / max(rows, 1))


def estimate(matches: int, sampled: int, rows: int) -> Count:
    """The matches of a table of ``rows`` rows, from ``matches`` of ``sampled`` rows in a
    sample, to two significant digits (what a sample of this size can tell), never below
    what the capped count found (more than COUNT_CAP)."""
    if sampled <= 0:
        return Count(COUNT_CAP + 1, False)
    guess = matches * rows / sampled
    digits = len(str(int(guess))) - 2
    rounded = int(round(guess, -digits)) if digits > 0 else int(guess)
    return Count(max(rounded, COUNT_CAP + 1), False)
