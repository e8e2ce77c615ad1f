"""Health: is every part a request needs working right now, and if not, which one?

Each part has a probe (a blocking callable that raises when the part is down). The
monitor runs every probe on its own thread and waits at most ``timeout`` for all of
them together, so a hung part (a stopped Redis, a Milvus that does not answer, a
wedged executor) is reported as down quickly instead of hanging the health check.
A probe still running from an earlier round is not started again: a hung part
never costs more than one thread. A part is reported down only after
``failures_to_down`` failed rounds in a row, so one slow answer on a saturated
machine does not flip the server's health.

The monitor does not use the shared executor: its liveness is one of the things
probed (a pool whose threads are all stuck serves nobody, however healthy Redis is).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from dmha.errors import DMHAError, Unavailable

__all__ = ["ComponentHealth", "HealthMonitor", "HealthReport", "Probe", "check_disk"]

log = logging.getLogger(__name__)

Probe = Callable[[], None]
"""A health probe: returns when its part works, raises (naming why) when it does not."""

_PROBE_FILE = ".health-probe"
_PROBE_BYTES = b"\0" * 4096  # one page: a full file system refuses it


@dataclass(frozen=True)
class ComponentHealth:
    """One part's state.

    Attributes:
        name: the part (``redis``, ``milvus``, ``executor``, ``generation``, ``disk``).
        ok: it works.
        detail: why it does not ("" when it does).
    """

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class HealthReport:
    """Every part's state at one moment."""

    components: tuple[ComponentHealth, ...]

    @property
    def ok(self) -> bool:
        """True when every part works."""
        return all(c.ok for c in self.components)

    @property
    def failing(self) -> list[ComponentHealth]:
        """The parts that do not work."""
        return [c for c in self.components if not c.ok]

    def summary(self) -> str:
        """One line naming each failing part and why ("ok" when none fails)."""
        return "; ".join(f"{c.name}: {c.detail}" for c in self.failing) or "ok"


class HealthMonitor:
    """Runs named probes with one shared time limit.

    Args:
        probes: ``(name, probe)`` pairs, in report order.
        timeout: seconds one :meth:`check` waits for all probes together.
        failures_to_down: failed rounds in a row before a part is reported down.
    """

    def __init__(self, probes: Sequence[tuple[str, Probe]], timeout: float, failures_to_down: int = 1) -> None:
        self._probes = list(probes)
        self._timeout = timeout
        self._threshold = max(1, failures_to_down)
        self._failures: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._probes)), thread_name_prefix="dmha-health")
        self._running: dict[str, tuple[Future[None], float]] = {}

    @property
    def names(self) -> list[str]:
        """The probed parts, in report order."""
        return [name for name, _ in self._probes]

    def check(self) -> HealthReport:
        """Probe every part (blocking, at most ``timeout`` seconds).

        Returns:
            Each part's state; a part whose probe failed (or did not finish in time)
            ``failures_to_down`` rounds in a row is down.
        """
        now = time.monotonic()
        for name, probe in self._probes:
            running = self._running.get(name)
            if running is None or running[0].done():
                self._running[name] = (self._pool.submit(probe), now)
        deadline = now + self._timeout
        states = []
        for name, _probe in self._probes:
            future, since = self._running[name]
            detail = ""
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                detail = f"no answer for {time.monotonic() - since:.1f} s"
            except DMHAError as exc:
                detail = str(exc)
            except Exception as exc:  # a probe that breaks unexpectedly: the part is unusable too
                log.warning("health probe %s raised", name, exc_info=exc)
                detail = f"probe failed: {type(exc).__name__}: {exc}"
            failures = self._failures[name] = self._failures.get(name, 0) + 1 if detail else 0
            if detail and failures < self._threshold:
                log.info("health probe %s failed (%d of %d before down): %s", name, failures, self._threshold, detail)
                detail = ""
            states.append(ComponentHealth(name, not detail, detail))
        return HealthReport(tuple(states))

    def close(self) -> None:
        """Stop the probe threads (a hung probe's thread is left to finish alone)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_disk(directory: Path, min_free_bytes: int) -> None:
    """Probe that ``directory`` has room and takes a write.

    Args:
        directory: DMHA's data dir (Redis's append-only file, the model registry and
            Milvus Lite live under it).
        min_free_bytes: below this much free space the disk counts as full.

    Raises:
        Unavailable: too little space, or a write (with fsync) failed.
    """
    try:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free < min_free_bytes:
            raise Unavailable(f"{directory} has {free // 1024} KiB free; at least {min_free_bytes // 1024} KiB needed")
        path = Path(directory) / _PROBE_FILE
        with open(path, "wb") as fh:
            fh.write(_PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
    except OSError as exc:
        raise Unavailable(f"cannot write to {directory}: {exc.strerror or exc}") from exc
