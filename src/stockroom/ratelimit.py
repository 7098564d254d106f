"""Rate limits: a budget of requests per caller, counted in memory or in Redis.

A moving window (the ``limits`` library's exact strategy): at most ``amount`` requests in any
window of the configured length, with no burst at a window's edge. Budgets live in the
process's memory by default, or in Redis so that several instances share one budget per
caller. If the store does not answer in time the request is let through and a warning is
logged: a rate limiter must not turn a Redis outage into a service outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

__all__ = ["STATE_KEY", "STORAGE_TIMEOUT", "Quota", "RateLimiter"]

# Where the rate limit dependency leaves the caller's Quota in the request state, for the
# middleware that writes the RateLimit-* headers.
STATE_KEY = "rate_limit"
# Longest a request waits for the budget store before it is let through unlimited.
STORAGE_TIMEOUT = 0.5
# At most one "store unavailable" warning per this many seconds, not one per request.
_WARNING_INTERVAL = 10.0
_KEY_PREFIX = "stockroom-rate"

log = structlog.get_logger("stockroom.ratelimit")


@dataclass(frozen=True, slots=True)
class Quota:
    """A caller's budget after counting this request."""

    limit: int
    remaining: int
    reset_seconds: int  # until the budget grows again (at least 1 when exhausted)
    allowed: bool

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
        ]


class RateLimiter:
    """Counts requests per caller identity against one limit."""

    def __init__(self, item: RateLimitItem, redis_url: str = "") -> None:
        self.item = item
        self._storage: Storage
        if redis_url:
            self._storage = RedisStorage(
                "async+" + redis_url,
                key_prefix=_KEY_PREFIX,
                connect_timeout=STORAGE_TIMEOUT,
                stream_timeout=STORAGE_TIMEOUT,
            )
        else:
            self._storage = MemoryStorage()
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._warned_at = -math.inf

    async def hit(self, identity: str) -> Quota | None:
        """Count one request of ``identity``; None if the store could not be asked."""
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT):
                allowed = await self._strategy.hit(self.item, identity)
                reset_at, remaining = await self._strategy.get_window_stats(self.item, identity)
        except Exception as exc:
            self._warn(exc)
            return None
        reset = max(0, math.ceil(reset_at - time.time()))
        return Quota(
            limit=self.item.amount,
            remaining=max(0, remaining),
            reset_seconds=reset if allowed else max(1, reset),
            allowed=allowed,
        )

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARNING_INTERVAL:
            self._warned_at = now
            log.warning("rate limit store unavailable; not limiting", error=type(exc).__name__)

    async def close(self) -> None:
        """Release the store: the memory store's expiry task, or the Redis connections."""
        if isinstance(self._storage, MemoryStorage):
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
        else:
            # limits exposes no close(); its coredis client keeps a connection pool.
            client = getattr(getattr(self._storage, "bridge", None), "storage", None)
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.disconnect()
