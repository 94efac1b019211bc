"""A token bucket that bounds the rate of scans and requests."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Allow ``rate_per_s`` units per second on average, with bursts up to one second's worth.

    A rate of 0 disables the limit.
    """

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self._capacity = max(rate_per_s, 1.0)
        self._tokens = self._capacity
        self._updated = time.monotonic()

    def _delay_for(self, units: float) -> float:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        self._tokens -= units
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate_per_s

    def acquire(self, units: float = 1.0) -> float:
        """Block until ``units`` are available; return the seconds waited."""
        if self.rate_per_s <= 0:
            return 0.0
        delay_s = self._delay_for(units)
        if delay_s > 0:
            time.sleep(delay_s)
        return delay_s

    async def acquire_async(self, units: float = 1.0) -> float:
        if self.rate_per_s <= 0:
            return 0.0
        delay_s = self._delay_for(units)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return delay_s
