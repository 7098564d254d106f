"""Rate limit budgets (stockroom.ratelimit) in the process's memory: what a caller has left,
and a store that fails letting requests through with one warning."""

from __future__ import annotations

from typing import Any

import limits
from structlog.testing import capture_logs

from stockroom.ratelimit import Quota, RateLimiter


def test_quota_headers_are_the_ratelimit_fields() -> None:
    quota = Quota(limit=10, remaining=3, reset_seconds=42, allowed=True)
    assert quota.headers() == [
        (b"ratelimit-limit", b"10"),
        (b"ratelimit-remaining", b"3"),
        (b"ratelimit-reset", b"42"),
    ]


async def test_each_caller_has_a_budget_of_its_own() -> None:
    limiter = RateLimiter(limits.parse("3/minute"))
    try:
        quotas = [await limiter.hit("key-a") for _ in range(4)]
        other = await limiter.hit("key-b")
    finally:
        await limiter.close()
    assert all(quota is not None for quota in quotas)
    assert [(q.allowed, q.remaining, q.limit) for q in quotas if q] == [
        (True, 2, 3),
        (True, 1, 3),
        (True, 0, 3),
        (False, 0, 3),
    ]
    refused = quotas[-1]
    assert refused is not None
    assert 1 <= refused.reset_seconds <= 60  # Retry-After is never 0 when refused
    assert other is not None
    assert (other.allowed, other.remaining) == (True, 2)


class _BrokenStrategy:
    async def hit(self, *_args: Any) -> bool:
        raise ConnectionError("redis is down")

    async def get_window_stats(self, *_args: Any) -> Any:
        raise AssertionError("not reached")


async def test_a_store_that_fails_lets_requests_through_with_one_warning() -> None:
    limiter = RateLimiter(limits.parse("1/minute"))
    limiter._strategy = _BrokenStrategy()  # type: ignore[assignment]
    try:
        with capture_logs() as logs:
            answers = [await limiter.hit("key-a") for _ in range(3)]
    finally:
        await limiter.close()
    assert answers == [None, None, None]
    assert logs == [
        {
            "event": "rate limit store unavailable; not limiting",
            "error": "ConnectionError",
            "log_level": "warning",
        }
    ]
