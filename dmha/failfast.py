"""Fail fast while a backend is known to be down.

Without this, every call to a hung backend waits out its own timeout while holding
an executor thread, and a burst of requests queues behind them. With it, the first
failure opens the switch: calls fail at once (UNAVAILABLE) for ``pause`` seconds;
then one call at a time may try the backend, and the first answer closes the
switch. A health probe that sees the backend answer closes it too, so calls work
again as soon as the backend is back.
"""

from __future__ import annotations

import threading
import time

__all__ = ["FailFast"]


class FailFast:
    """The switch of one backend (thread-safe).

    Args:
        pause: seconds after a failure during which calls fail without trying.
    """

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self._trying = False
        self.last_error: BaseException | None = None
        """The failure that opened the switch (the cause of calls failed without trying)."""

    @property
    def open(self) -> bool:
        """True while the backend is considered down."""
        return self._failed_at is not None

    def allow(self) -> bool:
        """May a call try the backend now?

        Returns:
            True when closed, or when the pause is over and no other call is trying
            (that call is then the one trying; report its outcome).
        """
        with self._lock:
            if self._failed_at is None:
                return True
            if self._trying or time.monotonic() - self._failed_at < self._pause:
                return False
            self._trying = True
            return True

    def failed(self, error: BaseException | None = None) -> None:
        """The backend did not answer: (re)open the switch.

        Args:
            error: what failed (kept as :attr:`last_error`).
        """
        with self._lock:
            self._failed_at = time.monotonic()
            self._trying = False
            if error is not None:
                self.last_error = error

    def answered(self) -> None:
        """The backend answered (even with an error of its own): close the switch."""
        with self._lock:
            self._failed_at = None
            self._trying = False
