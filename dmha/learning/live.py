"""The live-version pointer every process follows, kept in Redis.

One process (a worker that deployed, an admin's rollback on any replica) moves the
pointer and announces it on a pub/sub channel; every replica and worker runs a
:class:`LiveFollower` that hears the announcement, loads that version from the
shared registry and hot-swaps it in. Pub/sub delivers at most once, so the follower
also re-reads the pointer every ``learning.live_poll_seconds``: a lost message (a
reconnect, a Redis restart) delays a swap by at most that long.

Keys (under ``dmha:learn:``, ``{dmha:learn}:`` on a Redis Cluster): ``live`` (the
version id) and the channel ``dmha:learn:live-changed`` (messages carry the version id).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from dmha.errors import DMHAError, LearningError
from dmha.llm.base import ModelHandle
from dmha.redis_connection import RedisConnection

__all__ = ["GuardedDeploy", "LiveFollower", "LivePointer", "LiveTarget", "ModelHolder"]

log = logging.getLogger(__name__)

# Set the pointer only when it still names what the caller trained from, then announce.
# The channel is an argument, not a key: a Redis Cluster broadcasts it to every node.
_COMPARE_AND_SET = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return ARGV[2]
"""
# Set and announce together (a Redis Cluster refuses PUBLISH inside a MULTI).
_SET_AND_ANNOUNCE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""


class LiveTarget(Protocol):
    """What a follower swaps: the serving engine, or a worker's :class:`ModelHolder`."""

    @property
    def handle(self) -> ModelHandle:
        """The handle in use."""
        ...

    def swap(self, handle: ModelHandle) -> None:
        """Make ``handle`` the one in use (requests already running keep theirs)."""
        ...


class ModelHolder:
    """The live handle of a process that serves nothing (a training worker).

    Args:
        handle: the version loaded at start.
    """

    def __init__(self, handle: ModelHandle) -> None:
        self._handle = handle
        self._lock = threading.Lock()

    @property
    def handle(self) -> ModelHandle:
        """The live handle."""
        return self._handle

    def swap(self, handle: ModelHandle) -> None:
        """Replace the live handle."""
        with self._lock:
            old, self._handle = self._handle, handle
        log.info("model version %s is live in this worker (was %s)", handle.version, old.version)


class LivePointer:
    """The Redis key naming the live version, and its announcement channel.

    Args:
        conn: the shared Redis.
        prefix: key prefix.
    """

    def __init__(self, conn: RedisConnection, prefix: str = "dmha:learn:") -> None:
        self._conn = conn
        self.key = f"{conn.tag(prefix.rstrip(':'))}:live"
        self.channel = f"{prefix}live-changed"

    def _call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        return self._conn.call(fn, "the live-version pointer")

    def get(self) -> str | None:
        """The version the pointer names (None when never set).

        Raises:
            RedisUnavailable: Redis is down.
        """
        value = self._call(lambda c: c.get(self.key))
        return str(value) if value is not None else None

    def seed(self, version_id: str) -> str:
        """Set the pointer to ``version_id`` unless it is set already.

        Returns:
            The version it names now.
        """
        self._call(lambda c: c.set(self.key, version_id, nx=True))
        return self.get() or version_id

    def set(self, version_id: str) -> None:
        """Point at ``version_id`` and announce it (an admin's rollback or promotion).

        Raises:
            RedisUnavailable: Redis is down.
        """
        self._call(lambda c: c.eval(_SET_AND_ANNOUNCE, 1, self.key, version_id, self.channel))
        log.info("live pointer -> %s (announced)", version_id)

    def compare_and_set(self, expected: str, version_id: str) -> str:
        """Point at ``version_id`` only if the pointer still names ``expected`` (or nothing).

        A worker deploys with this: of two updates trained from the same version, the
        second finds the pointer moved and does not undo the first.

        Returns:
            What the pointer names now (``version_id`` when it was set).

        Raises:
            RedisUnavailable: Redis is down.
        """
        return str(self._call(lambda c: c.eval(_COMPARE_AND_SET, 1, self.key, expected, version_id, self.channel)))


class GuardedDeploy:
    """A worker's deploy: moves the shared pointer only if nobody moved it meanwhile.

    Two workers may train from the same live version at once; each version holds the
    cumulative change of its ancestors, so the second to finish must not replace the
    first. Its version stays registered (an admin may promote it); its job fails
    with the reason.

    Args:
        target: the worker's model holder.
        pointer: the shared pointer.
    """

    def __init__(self, target: LiveTarget, pointer: LivePointer) -> None:
        self._target = target
        self._pointer = pointer

    @property
    def handle(self) -> ModelHandle:
        """The worker's live handle."""
        return self._target.handle

    def swap(self, handle: ModelHandle) -> None:
        """Point every process at ``handle``'s version, then use it here.

        Raises:
            LearningError: the live version moved since this update started.
            RedisUnavailable: Redis is down (nothing moved).
        """
        parent = self._target.handle.version
        now = self._pointer.compare_and_set(parent, handle.version)
        if now != handle.version:
            raise LearningError(
                f"the live version changed from {parent} to {now} during the update "
                f"(another worker or an admin); version {handle.version} was kept but not deployed; resubmit"
            )
        self._target.swap(handle)


class LiveFollower:
    """A thread that keeps ``target`` on the version the pointer names.

    Args:
        pointer: the shared pointer.
        load: loads a version by id from the shared registry (blocking, seconds).
        target: what to swap.
        poll_seconds: the fallback re-read interval.
        on_tick: called on every wake-up (at least every ``poll_seconds``): how
            replicas reclaim the jobs of stopped workers without another thread.
    """

    def __init__(
        self,
        pointer: LivePointer,
        load: Callable[[str], ModelHandle],
        target: LiveTarget,
        poll_seconds: float,
        on_tick: Callable[[], Any] | None = None,
    ) -> None:
        self._pointer = pointer
        self._load = load
        self._target = target
        self._poll = poll_seconds
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.swaps = 0
        """Swaps made (tests and logs)."""

    def start(self) -> None:
        """Start following (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dmha-live-follower", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def sync(self) -> bool:
        """Swap to the pointer's version now if it differs from the target's.

        Returns:
            True when a swap happened.

        Raises:
            RedisUnavailable: Redis is down. NotFound/ArtifactError: the version
                cannot be loaded from the registry.
        """
        with self._lock:
            wanted = self._pointer.get()
            if wanted is None or wanted == self._target.handle.version:
                return False
            started = time.monotonic()
            handle = self._load(wanted)
            # Streams already running finish on the handle they started with.
            self._target.swap(handle)
            self.swaps += 1
            log.info("followed the live pointer to %s in %.2fs", wanted, time.monotonic() - started)
            return True

    def _run(self) -> None:
        pubsub: Any = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._pointer._conn.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self._pointer.channel)
                    self.sync()  # anything announced while we were not listening
                # get_message waits at most ``timeout``: a wake-up per message or poll.
                pubsub.get_message(timeout=self._poll)
                self.sync()
                if self._on_tick is not None:
                    self._on_tick()
            except (redis.ConnectionError, redis.TimeoutError, DMHAError):
                log.warning("live follower: Redis or registry unavailable; retrying", exc_info=True)
                _close(pubsub)
                pubsub = None
                self._stop.wait(1.0)
            except Exception:
                log.exception("live follower: unexpected error; retrying")
                _close(pubsub)
                pubsub = None
                self._stop.wait(1.0)
        _close(pubsub)


def _close(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:  # closing a broken connection may fail; it is dropped either way
            log.debug("closing pub/sub failed", exc_info=True)
