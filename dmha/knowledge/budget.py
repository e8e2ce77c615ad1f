"""The cost model of knowledge-base work: one budget per public operation.

Forward chaining is exponential in the worst case (a transitive rule over a chain
of N facts fires ~N^3/6 instances; a rule with many conditions explores a join of
that depth), and the view's lock is held while it runs. Every join step and every
fired instance is charged here, so one operation does at most
``knowledge.max_derivations`` steps and runs at most ``knowledge.max_operation_seconds``;
past either it stops with RESOURCE_EXHAUSTED naming the limit. It also stops
when the request that asked for it was cancelled (client gone, deadline passed).
"""

from __future__ import annotations

import time

from dmha.errors import ResourceExhausted
from dmha.executor import check_cancelled

__all__ = ["WorkBudget"]

# Clock and cancellation are checked every this many steps (cheap counter otherwise).
_CHECK_EVERY = 1024


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
