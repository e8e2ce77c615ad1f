"""What background work takes from the process: heap memory handed back, CPU priority.

A learning job allocates and frees a few gigabytes of tensors from several threads
(the edit, the gate's probe threads, the freeze). glibc keeps freed chunks in
per-thread arenas for reuse, so without a trim a server's resident size stays at its
largest job's peak, and fragmentation grows it job after job.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from functools import cache

__all__ = ["lower_thread_priority", "trim"]

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Return free heap pages of every arena to the OS (glibc ``malloc_trim(0)``).

    Returns:
        True when memory was released; False when nothing was or the C library has
        no ``malloc_trim``.
    """
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


def lower_thread_priority(nice: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux: per thread), so background work
    (freezing a deployed version) gives way to the next job and to serving."""
    # Not Linux, or not permitted: it runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
