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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["configure_executor", "run_blocking", "shutdown_executor"]

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
