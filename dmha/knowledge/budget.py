"""The cost model of knowledge-base work: one budget per public operation.

Forward chaining is exponential in the worst case (a transitive rule over a chain
of N facts fires ~N^3/6 instances; a rule with many conditions explores a join of
that depth), and the view's lock is held while it runs. Every join step and every
fired instance is charged here, so one operation does at most
``knowledge.max_derivations`` steps and runs at most ``knowledge.max_operation_seconds``;
past either it stops with RESOURCE_EXHAUSTED naming the limit. It also stops
when the request that asked for it was cancelled (client gone, deadline passed).

Bounding each operation is not enough on a small machine: one user sending such
Tells back to back keeps a core busy. :class:`WorkQuota` also bounds the time each
user's derivations may run per minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dmha.errors import ResourceExhausted
from dmha.executor import check_cancelled
from dmha.process_resources import share_interpreter

__all__ = ["WorkBudget", "WorkQuota"]

# Clock and cancellation are checked every this many steps (cheap counter otherwise).
_CHECK_EVERY = 1024
# Decoding gets the interpreter lock every this many steps (a few µs of work each).
_SHARE_EVERY = 4


class WorkBudget:
    """Counts derivation steps of one knowledge-base operation.

    Args:
        max_steps: most join steps + fired rule instances.
        seconds: most wall-clock seconds.
    """

    __slots__ = ("_end", "_max", "_seconds", "steps")

    def __init__(self, max_steps: int, seconds: float) -> None:
        self._max = max_steps
        self._seconds = seconds
        self._end = time.monotonic() + seconds
        self.steps = 0

    def charge(self) -> None:
        """Count one step.

        Raises:
            ResourceExhausted: the step or time limit is exceeded (names the limit).
            Cancelled: the request was cancelled.
        """
        self.steps += 1
        if self.steps % _SHARE_EVERY == 0:
            # Derivation is pure Python: it holds the interpreter lock while the
            # generation thread wants it back after every torch op. Without this, that
            # thread waited up to a switch interval per op and everyone's replies slowed.
            share_interpreter()
        if self.steps > self._max:
            raise ResourceExhausted(
                f"knowledge-base work exceeds {self._max} derivation steps "
                "(limit knowledge.max_derivations); nothing was added"
            )
        if self.steps % _CHECK_EVERY == 0:
            if time.monotonic() > self._end:
                raise ResourceExhausted(
                    f"knowledge-base work exceeds {self._seconds:g} s "
                    "(limit knowledge.max_operation_seconds); nothing was added"
                )
            check_cancelled()


class WorkQuota:
    """Seconds of knowledge-base work each user may run per minute (token bucket).

    An operation starts only while the user's bucket is not empty; what it spends is
    taken afterwards (one operation may overdraw by at most its own budget), and the
    bucket refills at ``seconds_per_minute / 60`` per second. One user's derivations
    therefore run at most that share of the time, however fast they send.

    Args:
        seconds_per_minute: the refill rate and the bucket size; 0 = no quota.
        clock: seconds source, injectable for tests.
    """

    def __init__(self, seconds_per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = float(seconds_per_minute)
        self._rate = seconds_per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, last = self._buckets.get(key, (self._size, now))
        return min(self._size, level + (now - last) * self._rate)

    def check(self, key: str) -> None:
        """Let an operation of ``key`` start, or refuse it.

        Raises:
            ResourceExhausted: the user spent the quota (says when to retry).
        """
        if self._size <= 0:
            return
        now = self._clock()
        with self._lock:
            level = self._level(key, now)
            self._buckets[key] = (level, now)
        if level <= 0:
            raise ResourceExhausted(
                f"knowledge-base work over {self._size:g} seconds per minute "
                f"(limit knowledge.max_work_seconds_per_minute); retry in {-level / self._rate + 1:.0f} s"
            )

    def spend(self, key: str, seconds: float) -> None:
        """Take what an operation of ``key`` spent."""
        if self._size <= 0:
            return
        now = self._clock()
        with self._lock:
            self._buckets[key] = (self._level(key, now) - seconds, now)
            if len(self._buckets) > 256:  # full buckets carry no information: keep active users only
                full = [k for k, (lvl, last) in self._buckets.items() if lvl + (now - last) * self._rate >= self._size]
                for k in full:
                    del self._buckets[k]
