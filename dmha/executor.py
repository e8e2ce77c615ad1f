"""The one place blocking work leaves the event loop.

torch, z3 and pymilvus calls block; the async edge awaits them through
:func:`run_blocking` so a stream handler never stalls the loop. One bounded
thread pool is shared by the whole process so that the number of threads doing
heavy work stays predictable on small machines.

Because the pool is shared, one caller must not be able to fill it: work bound to
a caller (:func:`bind_caller`, set by the server per request) may occupy at most
``per_caller`` threads at once; further calls wait on the event loop, holding no
thread. Work also learns when its awaiting coroutine was cancelled (client gone,
deadline passed) through :func:`check_cancelled`, so long loops can stop early
instead of running on for nobody.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ParamSpec, TypeVar

from dmha.errors import Cancelled, Unavailable

__all__ = [
    "bind_caller",
    "check_cancelled",
    "check_executor",
    "configure_executor",
    "run_blocking",
    "run_in_background",
    "settle_background",
    "shutdown_executor",
]

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads = 4
_per_caller = 2
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("dmha_executor_caller", default=None)
_cancel: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("dmha_executor_cancel", default=None)


def configure_executor(threads: int, per_caller: int | None = None) -> None:
    """Set the pool size; takes effect for a pool not yet started.

    Args:
        threads: worker threads for blocking calls.
        per_caller: most threads one caller's work may hold at once (None: keep;
            capped at ``threads - 1`` so one caller never takes the whole pool).
    """
    global _threads, _per_caller
    with _lock:
        _threads = threads
        if per_caller is not None:
            _per_caller = per_caller
        _per_caller = max(1, min(_per_caller, threads - 1))


def bind_caller(key: str | None) -> None:
    """Charge the current context's blocking work to ``key`` (e.g. a user id).

    Args:
        key: the caller; None = unbound (internal work, never waits for a slot).
    """
    _caller.set(key)


def check_cancelled() -> None:
    """Cooperative cancellation point for work running in the pool.

    Raises:
        Cancelled: the coroutine awaiting this work was cancelled (client gone or
            deadline passed); the result would be thrown away.
    """
    event = _cancel.get()
    if event is not None and event.is_set():
        raise Cancelled("the request was cancelled")


class _Waiter:
    """A coroutine waiting for one of its caller's slots (granted under the lock)."""

    __slots__ = ("fut", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _CallerSlots:
    """Per-caller counting semaphores that work across threads and event loops.

    Slots are released from the worker thread when the work really ends (not when
    its awaiter is cancelled), so cancelling and re-sending cannot pile up threads.
    Entries disappear when a caller has nothing running, so the map stays small.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}

    async def acquire(self, key: str, cap: int) -> None:
        with self._lock:
            if self._active.get(key, 0) < cap and not self._waiters.get(key):
                self._active[key] = self._active.get(key, 0) + 1
                return
            waiter = _Waiter(asyncio.get_running_loop())
            self._waiters.setdefault(key, deque()).append(waiter)
        try:
            await waiter.fut
        except asyncio.CancelledError:
            with self._lock:
                granted = waiter.granted
                queue = self._waiters.get(key)
                if not granted and queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiters[key]
            if granted:  # the slot was handed over as we were cancelled: pass it on
                self.release(key)
            raise

    def release(self, key: str) -> None:
        with self._lock:
            queue = self._waiters.get(key)
            while queue:
                waiter = queue.popleft()
                if not queue:
                    del self._waiters[key]
                waiter.granted = True
                try:
                    waiter.loop.call_soon_threadsafe(_wake, waiter.fut)
                    return  # the slot moves to the waiter; the count is unchanged
                except RuntimeError:  # its loop is closed: nobody is waiting there
                    waiter.granted = False
            left = self._active.get(key, 0) - 1
            if left > 0:
                self._active[key] = left
            else:
                self._active.pop(key, None)

    def active(self, key: str) -> int:
        with self._lock:
            return self._active.get(key, 0)


_slots = _CallerSlots()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="dmha-blocking")
        return _pool


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in the shared pool and await its result.

    The caller's context variables (request id for logs) travel with the call. Work
    bound to a caller first waits (on the loop, holding no thread) for one of that
    caller's slots. Cancelling the await marks the work cancelled for
    :func:`check_cancelled`; the slot is freed when the work actually returns.

    Args:
        fn: a blocking callable.
        *args: positional arguments.
        **kwargs: keyword arguments.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        Whatever ``fn`` raises.
    """
    ctx = contextvars.copy_context()
    cancel = threading.Event()
    ctx.run(_cancel.set, cancel)
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    key = _caller.get()
    if key is not None:
        await _slots.acquire(key, _per_caller)
    try:
        future: Future[T] = _get_pool().submit(call)
    except BaseException:
        if key is not None:
            _slots.release(key)
        raise
    if key is not None:
        future.add_done_callback(lambda _f: _slots.release(key))
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        cancel.set()
        raise


_liveness: tuple[Future[None], float] | None = None


def _noop() -> None:
    return None


def check_executor(stall_seconds: float, wait: float = 0.2) -> None:
    """The health probe: a no-op sent to the pool gets a thread within ``stall_seconds``.

    Non-blocking beyond ``wait``: one no-op is in flight at a time, and a later probe
    reports how long it has been waiting.

    Args:
        stall_seconds: waiting longer than this for a thread counts as wedged.
        wait: how long this call waits for the no-op to run.

    Raises:
        Unavailable: every thread has been busy for longer than ``stall_seconds``.
    """
    global _liveness
    pool = _get_pool()
    with _lock:
        if _liveness is None or _liveness[0].done():
            _liveness = (pool.submit(_noop), time.monotonic())
        future, since = _liveness
    try:
        future.result(timeout=wait)
    except (FutureTimeout, CancelledError):
        waited = time.monotonic() - since
        if waited > stall_seconds:
            raise Unavailable(f"no free thread for {waited:.0f} s (all {_threads} busy)") from None


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


async def settle_background() -> None:
    """Wait until this loop's background work, including work it schedules, has finished.

    Tasks left behind by a loop that has since closed (an earlier test, a restarted
    server) are dropped rather than awaited: they can never finish.
    """
    loop = asyncio.get_running_loop()
    while True:
        for task in list(_background):
            if task.get_loop().is_closed():
                _background.discard(task)
        mine = [t for t in _background if t.get_loop() is loop]
        if not mine:
            return
        await asyncio.gather(*mine, return_exceptions=True)
