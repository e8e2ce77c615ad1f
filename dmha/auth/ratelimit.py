"""Per-user request rate limit (token bucket, in process)."""

from __future__ import annotations

import threading
import time

from dmha.errors import ResourceExhausted

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allows ``per_minute`` requests per user, refilled continuously.

    Args:
        per_minute: sustained requests per minute per user (also the burst); 0 = no limit.
        clock: seconds source, injectable for tests.
    """

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, user_id: str) -> None:
        """Take one request from the user's bucket.

        Raises:
            ResourceExhausted: the user is over the limit (says when to retry).
        """
        if self._burst <= 0:
            return
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(user_id, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                wait = (1.0 - tokens) / self._rate
                self._buckets[user_id] = (tokens, now)
                raise ResourceExhausted(
                    f"rate limit of {int(self._burst)} requests/minute exceeded; retry in {wait:.1f}s"
                )
            self._buckets[user_id] = (tokens - 1.0, now)
