"""Announcements that a user's long-term memories changed, for the other replicas.

Each replica keeps an in-process hot index (vectors, Faiss, BM25 postings) of its
active users in front of Milvus. When several replicas share one Milvus, a write
through one must not leave another answering from a stale copy: after Milvus
acknowledged a user's change, the writing replica publishes the user id on
``dmha:memory:changed``, and every other replica drops that user's hot index (it is
rebuilt from Milvus on next use). A replica that misses a message (a reconnect)
drops every loaded index, since it cannot know what it missed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

from dmha.errors import DMHAError
from dmha.redis_connection import RedisConnection

__all__ = ["MemoryChanges"]

log = logging.getLogger(__name__)


class MemoryChanges:
    """Publishes this process's memory changes and applies everyone else's.

    Args:
        conn: the shared Redis.
        invalidate: drops one user's hot index (``LongTermMemory.invalidate``).
        invalidate_all: drops every loaded index (after a gap in the subscription).
        channel: the pub/sub channel.
    """

    def __init__(
        self,
        conn: RedisConnection,
        invalidate: Callable[[str], None],
        invalidate_all: Callable[[], None],
        channel: str = "dmha:memory:changed",
    ) -> None:
        self._conn = conn
        self._invalidate = invalidate
        self._invalidate_all = invalidate_all
        self.channel = channel
        self.origin = uuid.uuid4().hex
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, user_id: str) -> None:
        """Announce that ``user_id``'s memories changed (after the store acknowledged).

        A failed announcement is logged, not raised: the write itself succeeded.
        """
        try:
            self._conn.call(lambda c: c.publish(self.channel, f"{self.origin} {user_id}"), "memory announcements")
        except DMHAError:
            log.warning("could not announce a memory change of %s; other replicas may serve it stale", user_id)

    def start(self, timeout: float = 5.0) -> None:
        """Start applying other processes' announcements; returns once subscribed."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dmha-memory-changes", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def _run(self) -> None:
        pubsub: Any = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._conn.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    self._invalidate_all()  # whatever changed while we were not listening
                    self._ready.set()
                msg = pubsub.get_message(timeout=1.0)
                if msg and isinstance(msg.get("data"), str):
                    origin, _, user = msg["data"].partition(" ")
                    if origin != self.origin and user:
                        self._invalidate(user)
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("memory announcements: Redis unavailable; resubscribing")
                if pubsub is not None:
                    pubsub.close()
                pubsub = None
                self._stop.wait(1.0)
        if pubsub is not None:
            pubsub.close()
