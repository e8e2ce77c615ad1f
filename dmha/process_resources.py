"""What background work takes from the process: heap memory handed back, CPU priority,
the interpreter lock.

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
import time
from collections.abc import Iterator
from functools import cache

__all__ = ["foreground", "lower_thread_priority", "reachable_tensor_bytes", "share_interpreter", "trim"]

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


# Threads now doing latency-sensitive work that needs the interpreter lock between
# native calls (decoding: one lock round trip per torch op). A plain counter: a stale
# read costs one extra or one missed pause, never correctness.
_foreground = 0
_foreground_lock = threading.Lock()
# Long enough for a waiting thread to wake and take the lock (tens of µs), short
# enough that background work keeps most of its pace.
_PAUSE_SECONDS = 20e-6


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Mark the enclosed work as latency-sensitive: background loops that call
    :func:`share_interpreter` pause for it while it runs."""
    global _foreground
    with _foreground_lock:
        _foreground += 1
    try:
        yield
    finally:
        with _foreground_lock:
            _foreground -= 1


def share_interpreter() -> None:
    """Called often by pure-Python background work (knowledge-base derivation): while
    foreground work runs, release the interpreter lock for a moment.

    A thread that waits for the lock gets it only when the holder drops it, after up
    to ``sys.getswitchinterval()``; decoding waits that long after every torch op and
    ran 35-60x slower beside a derivation. ``os.sched_yield`` released the lock but,
    on an idle core, took it straight back before the waiter woke (measured on this
    2-core host); a real sleep lets the waiter in. It costs nothing when no one waits.
    """
    if _foreground:
        time.sleep(_PAUSE_SECONDS)


def reachable_tensor_bytes() -> int:
    """Bytes of tensor memory that Python objects reach (unique storages), after a collection.

    A diagnostic for memory kept per model version: it also counts tensors that
    outlived the weights they view (e.g. a frozen graph's constants).
    """
    import gc
    import warnings

    import torch

    gc.collect()
    with warnings.catch_warnings():  # touching every object wakes deprecated aliases
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    storages = {}
    for t in tensors:
        if t.layout == torch.strided and not t.is_meta:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())
