"""The one place blocking work leaves the event loop.

torch, z3 and pymilvus calls block; the async edge awaits them through
:func:`run_blocking` so a stream handler never stalls the loop. One bounded
thread pool is shared by the whole process so that the number of threads doing
heavy work stays predictable on small machines.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

__all__ = ["configure_executor", "run_blocking", "run_in_background", "shutdown_executor"]

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads = 4


def configure_executor(threads: int) -> None:
    """Set the pool size; takes effect for a pool not yet started.

    Args:
        threads: worker threads for blocking calls.
    """
    global _threads
    with _lock:
        _threads = threads


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="dmha-blocking")
        return _pool


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in the shared pool and await its result.

    The caller's context variables (request id for logs) travel with the call.

    Args:
        fn: a blocking callable.
        *args: positional arguments.
        **kwargs: keyword arguments.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        Whatever ``fn`` raises.
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await loop.run_in_executor(_get_pool(), call)


def shutdown_executor() -> None:
    """Stop the pool (server shutdown); a later call starts a new one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


_background: set[asyncio.Future[Any]] = set()


def run_in_background(fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
    """Schedule blocking follow-up work (archival, event logging) off the request path.

    A reference is kept until it finishes (the loop holds tasks only weakly), and a
    failure is logged rather than lost.

    Args:
        fn: a blocking callable.
        *args: its arguments.

    Returns:
        The task, for callers that want to await it (tests).
    """
    task = asyncio.ensure_future(run_blocking(fn, *args))
    _background.add(task)

    def done(t: asyncio.Future[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background %s failed", getattr(fn, "__qualname__", fn), exc_info=t.exception())

    task.add_done_callback(done)
    return task
