"""An exclusive lock shared by the threads of this process and by other processes.

Several processes (``dmha worker`` replicas) may share one folder and rewrite the
same files; an advisory ``flock`` on a lock file in that folder serialises their
read-modify-write sections. Where ``flock`` is unavailable (not POSIX) or refused
(some network file systems), the lock still serialises this process's threads and
says once, in the log, that other processes are not excluded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the lock covers this process's threads only
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock"]

log = logging.getLogger(__name__)


class FileLock:
    """A blocking, non-reentrant exclusive lock on ``path``.

    Args:
        path: the lock file (created if absent; its content is never read).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._threads = threading.Lock()
        self._warned = False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the body of a ``with`` block.

        Raises:
            OSError: the lock file cannot be created (the folder is missing or read-only).
        """
        # The thread lock first: flock would serialise this process's threads too (each
        # acquisition opens its own file description), but it costs a file per wait.
        with self._threads:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._lock(fd)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _lock(self, fd: int) -> None:
        if fcntl is None:
            self._degraded("flock is not available on this platform")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._degraded(f"flock failed: {exc}")

    def _degraded(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s; %s excludes only this process's threads, not other processes", why, self.path)
