"""Reading a training job's event stream: the events, and a watch that follows them.

:class:`~dmha.learning.jobs.JobStore` writes each state change and training step to
the job's stream; :class:`JobWatch` reads them in order until the terminal one.
The job states live here so that both modules share them without importing each
other at run time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the store builds watches; a run-time import would be circular
    from dmha.learning.jobs import JobStore

__all__ = ["RUNNING_STATES", "TERMINAL_STATES", "JobEvent", "JobState", "JobWatch"]

JobState = Literal["candidate", "queued", "training", "evaluating", "freezing", "deployed", "rejected", "failed"]
RUNNING_STATES: frozenset[str] = frozenset({"training", "evaluating", "freezing"})
TERMINAL_STATES: frozenset[str] = frozenset({"deployed", "rejected", "failed"})


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event stream: a state change or a training step."""

    job_id: str
    state: JobState
    step: int
    steps: int
    loss: float
    at: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    version: str = ""

    @property
    def terminal(self) -> bool:
        """True for the job's last event."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_fields(cls, job_id: str, f: dict[str, str]) -> JobEvent:
        """The event a stream entry's fields describe (as ``JobStore`` wrote them)."""
        return cls(
            job_id=job_id,
            state=f["state"],  # type: ignore[arg-type]
            step=int(f.get("step", 0)),
            steps=int(f.get("steps", 0)),
            loss=float(f.get("loss", 0.0)),
            at=float(f.get("at", 0.0)),
            metrics=json.loads(f.get("metrics", "{}")),
            error=f.get("error", ""),
            version=f.get("version", ""),
        )


class JobWatch:
    """One reader of a job's event stream (see :meth:`JobStore.watch`).

    Args:
        store: the job store.
        job_id: the job (known to exist).
        timeout: iteration gives up after this many seconds (None: never).
        block_ms: how long one read blocks while iterating.
    """

    def __init__(self, store: JobStore, job_id: str, timeout: float | None, block_ms: int) -> None:
        self._store = store
        self.job_id = job_id
        self._last = "0-0"
        self._block_ms = block_ms
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._buffer: list[JobEvent] = []
        self.done = False
        """True once the terminal event was read (or the watch was closed)."""

    def poll(self, block_ms: int | None = None) -> list[JobEvent]:
        """Read what is there, waiting at most ``block_ms`` for something new.

        Args:
            block_ms: longest wait in Redis; None = do not wait at all.

        Returns:
            The events read, in order (empty when none arrived); the last one is
            terminal when the job is over.

        Raises:
            NotFound: the job disappeared. RedisUnavailable: Redis is down.
        """
        if self.done:
            return []
        events: list[JobEvent] = []
        for entry_id, fields in self._store.read_events(self.job_id, self._last, block_ms):
            self._last = entry_id
            event = JobEvent.from_fields(self.job_id, fields)
            events.append(event)
            if event.terminal:
                self.done = True
                return events
        if not events and self._last == "0-0":
            job = self._store.get(self.job_id)
            if job.state in TERMINAL_STATES:
                # The stream expired before anyone watched: report the final state.
                self.done = True
                return [
                    JobEvent(
                        self.job_id,
                        job.state,
                        job.step,
                        job.steps,
                        job.loss,
                        job.updated_at,
                        job.metrics,
                        job.error,
                        job.version,
                    )
                ]
        return events

    def close(self) -> None:
        """Stop watching (later polls return nothing)."""
        self.done = True

    def __iter__(self) -> Iterator[JobEvent]:
        return self

    def __next__(self) -> JobEvent:
        while not self._buffer:
            if self.done or (self._deadline is not None and time.monotonic() > self._deadline):
                raise StopIteration
            self._buffer = self.poll(self._block_ms)
        return self._buffer.pop(0)
