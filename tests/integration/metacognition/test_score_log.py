"""The monitor's score log in a real Redis: newest first, capped, per user."""

from __future__ import annotations

import pytest

from dmha.config import RedisConfig
from dmha.errors import InvalidArgument
from dmha.metacognition import EventStore, ScoreEntry
from dmha.redis_connection import RedisConnection

pytestmark = pytest.mark.integration


def test_scores_newest_first_capped_and_per_user(tmp_path):
    conn = RedisConnection(RedisConfig(), tmp_path)
    try:
        store = EventStore(conn, cap=3)
        for n in range(5):
            entry = ScoreEntry(f"t{n}", "s1", float(n), n / 10, {"low_confidence": n / 10}, n == 4, "passed")
            store.add_score("alice", entry)
        store.add_score("bob", ScoreEntry("b", "s", 0.0, 0.9, {}, True, "corrected"))
        got = store.scores("alice")
        assert [s.turn_id for s in got] == ["t4", "t3", "t2"]
        assert got[0].fired and got[0].signals == {"low_confidence": 0.4}
        assert [s.turn_id for s in store.scores("alice", limit=1)] == ["t4"]
        assert [s.turn_id for s in store.scores("bob")] == ["b"]
        assert store.scores("carol") == []
        with pytest.raises(InvalidArgument, match="limit"):
            store.scores("alice", limit=4)
    finally:
        conn.close()
