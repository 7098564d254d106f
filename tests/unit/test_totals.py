"""items._totals: which counts the kept totals answer, and how an estimate is made from a
sample (PostgreSQL's count=true above 1,000 matches)."""

from __future__ import annotations

import pytest

from stockroom.items._totals import estimate, matches_in_totals, sample_percent, totals_answer
from stockroom.items.models import Count, Summary
from stockroom.items.repository import COUNT_CAP, ItemFilter

TOTALS = Summary(items=5_000_000, units=1, value_cents=1, out_of_stock=500_000, low_stock=250)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (ItemFilter(), 5_000_000),
        (ItemFilter(in_stock=False), 500_000),
        (ItemFilter(in_stock=True), 4_500_000),
        (ItemFilter(low_stock=True), 250),
        (ItemFilter(low_stock=False), 4_999_750),
        # Both stock filters, `q` or a price: the totals cannot tell.
        (ItemFilter(in_stock=True, low_stock=True), None),
        (ItemFilter(q="oak"), None),
        (ItemFilter(min_price_cents=100), None),
        (ItemFilter(max_price_cents=100, in_stock=True), None),
    ],
)
def test_the_totals_answer_the_stock_filters_alone(where: ItemFilter, expected: int | None) -> None:
    assert (matches_in_totals(where, TOTALS) if totals_answer(where) else None) == expected


def test_an_estimate_scales_the_sample_to_two_significant_digits() -> None:
    # 3,012 of 30,087 sampled rows of 5,000,000: 500,548 -> 500,000.
    assert estimate(3_012, 30_087, 5_000_000) == Count(500_000, False)
    assert estimate(1_234, 30_000, 1_000_000) == Count(41_000, False)
    assert estimate(30_000, 30_000, 1_500) == Count(1_500, False)


def test_an_estimate_is_never_below_what_the_capped_count_found() -> None:
    # The capped count found more than COUNT_CAP; a sample that saw none must not say fewer.
    assert estimate(0, 30_000, 5_000_000) == Count(COUNT_CAP + 1, False)
    assert estimate(5, 0, 5_000_000) == Count(COUNT_CAP + 1, False)


def test_the_sample_holds_about_10000_rows() -> None:
    assert sample_percent(5_000_000) == pytest.approx(0.2)
    assert sample_percent(10_000) == 100.0
    assert sample_percent(0) == 100.0
