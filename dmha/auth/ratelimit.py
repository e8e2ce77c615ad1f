"""Per-user request rate limits: a token bucket in process, or in Redis for all replicas."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from dmha.errors import ResourceExhausted
from dmha.redis_connection import RedisConnection

__all__ = ["Limiter", "RateLimiter", "RedisRateLimiter"]


class Limiter(Protocol):
    """Takes one request from a key's allowance."""

    def check(self, key: str) -> None:
        """Raises ResourceExhausted when ``key`` is over its limit."""
        ...

    def refuse_known(self, key: str) -> None:
        """Raises ResourceExhausted at once, with no I/O, when ``key`` is known to be over
        its limit (so a client hammering past its limit costs no round trip)."""
        ...


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

    def refuse_known(self, user_id: str) -> None:
        """Nothing to do: :meth:`check` itself is in memory."""


# The same bucket as RateLimiter, kept in one Redis hash per key so every replica
# draws from it: refill by elapsed time (Redis's own clock, so replicas' clocks do not
# matter), take one token or answer how long until one is there. Atomic as a script.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(redis.call('HGET', KEYS[1], 't'))
local last = tonumber(redis.call('HGET', KEYS[1], 'at'))
if tokens == nil or last == nil then tokens = burst; last = now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisRateLimiter:
    """:class:`RateLimiter`'s token bucket kept in Redis: one limit across all replicas.

    Args:
        conn: the shared Redis connection.
        per_minute: sustained requests per minute per key (also the burst); 0 = no limit.
        scope: names the limit in its keys (``dmha:rate:<scope>:<key>``, the key
            in braces on a Redis Cluster).
    """

    def __init__(self, conn: RedisConnection, per_minute: int, scope: str) -> None:
        self._conn = conn
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._prefix = f"dmha:rate:{scope}:"
        # Keys Redis refused, and until when: no token can appear in their bucket before
        # then (only the refill adds tokens, and a refused request takes none), so
        # refusing them here gives the answer Redis would, without the round trip.
        self._refused: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def refuse_known(self, key: str) -> None:
        """Refuse ``key`` at once while Redis's last answer says it is still over the limit.

        Raises:
            ResourceExhausted: over the limit (says when to retry).
        """
        if not self._refused:
            return
        now = time.monotonic()
        with self._lock:
            until, _ = self._refused.get(key, (0.0, 0.0))
            if until <= now:
                self._refused.pop(key, None)
                return
        raise self._exhausted(until - now)

    def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket (blocking: one Redis round trip).

        Raises:
            ResourceExhausted: over the limit (says when to retry).
            RedisUnavailable: Redis is down.
        """
        if self._burst <= 0:
            return
        name = self._prefix + self._conn.tag(key)
        wait = float(
            self._conn.call(
                lambda c: c.eval(_TOKEN_BUCKET, 1, name, repr(self._rate), repr(self._burst)), "the rate limit"
            )
        )
        if wait > 0:
            now = time.monotonic()
            with self._lock:
                self._refused[key] = (now + wait, now)
                if len(self._refused) > 1024:  # keep the keys still refused
                    self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
            raise self._exhausted(wait)

    def _exhausted(self, wait: float) -> ResourceExhausted:
        return ResourceExhausted(f"rate limit of {int(self._burst)} requests/minute exceeded; retry in {wait:.1f}s")
