"""A training worker's lease on its jobs, renewed by a thread, and the reclaiming of
stopped workers' jobs (see :mod:`dmha.learning.jobs` for the keys)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from dmha.errors import DMHAError
from dmha.learning.jobs import JobStore

__all__ = ["WorkerLease", "new_owner_id"]

log = logging.getLogger(__name__)


def new_owner_id() -> str:
    """A worker id unique across hosts and restarts: ``<host>-<pid>-<random>``."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())[:60]
    return f"{host or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class WorkerLease:
    """Renews ``jobs.owner``'s lease every third of its lifetime and reclaims the jobs
    of workers whose lease expired.

    Args:
        jobs: the worker's job store (with an ``owner``).
    """

    def __init__(self, jobs: JobStore) -> None:
        if not jobs.owner:
            raise ValueError("a worker lease needs a job store with an owner")
        self._jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the lease now (so claims are covered from the first one), then keep it.

        Raises:
            RedisUnavailable: Redis is down.
        """
        self._jobs.renew()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dmha-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the lease up (the worker's jobs are settled by then)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        try:
            self._jobs.release()
        except DMHAError:
            log.warning("could not release the worker lease; it expires on its own")

    def _run(self) -> None:
        interval = self._jobs.lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                self._jobs.renew()
                self._jobs.reclaim()
            except DMHAError:
                log.warning("worker lease: Redis unavailable; retrying", exc_info=True)
