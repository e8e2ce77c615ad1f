"""Memory-change announcements between replicas over a real Redis."""

from __future__ import annotations

import time

import pytest

from dmha.memory.changes import MemoryChanges
from dmha.redis_connection import RedisConnection

pytestmark = pytest.mark.integration


def test_a_change_through_one_replica_invalidates_the_others_only(shared_redis: RedisConnection) -> None:
    conn = shared_redis
    dropped: dict[str, list[str]] = {"a": [], "b": []}
    resets = {"a": 0, "b": 0}

    def bus(name: str) -> MemoryChanges:
        def reset() -> None:
            resets[name] += 1

        return MemoryChanges(conn, dropped[name].append, reset)

    a, b = bus("a"), bus("b")
    a.start()
    b.start()
    try:
        assert resets == {"a": 1, "b": 1}  # subscribing drops what may have been missed
        a.publish("alice")
        b.publish("bob")
        deadline = time.monotonic() + 5
        while (not dropped["a"] or not dropped["b"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Each replica drops the other's user; its own write was mirrored already.
        assert dropped == {"a": ["bob"], "b": ["alice"]}
    finally:
        a.stop()
        b.stop()
