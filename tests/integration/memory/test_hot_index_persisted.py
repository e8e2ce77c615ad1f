"""Persisted hot indexes across restarts, on real Redis, real Milvus Lite and MiniLM."""

from __future__ import annotations

import pytest

from dmha.config import HotIndexConfig, LongTermConfig, MemoryConfig, WorkingMemoryConfig
from dmha.turn import Turn, new_turn_id

pytestmark = pytest.mark.integration

TURNS = [
    "My sister Margaret lives in Lisbon and teaches chemistry.",
    "Nice! Do you visit her often?",
    "I adopted a beagle named Pepper last spring.",
    "What does Pepper like to do?",
]


def cfg(hot_dir: str = "") -> MemoryConfig:
    return MemoryConfig(
        working=WorkingMemoryConfig(max_turns=2),
        longterm=LongTermConfig(archive_batch=2, timeout_seconds=10),
        hot_index=HotIndexConfig(min_memories=0, dir=hot_dir),
    )


def say(wm, user: str, session: str, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        wm.append([Turn(new_turn_id(), user, session, "user" if i % 2 == 0 else "assistant", text, 1.7e9 + i)])


def texts(ltm, query: str) -> list[str]:
    return [m.text for m in ltm.search("alice", query, k=5)]


def test_restart_loads_the_persisted_index_and_finds_writes_before_and_after(make_memory, tmp_path):
    ltm, wm = make_memory(cfg())
    say(wm, "alice", "s1", TURNS)
    ltm.archive_session("alice", "s1")  # through Redis working memory into Milvus
    assert any("Lisbon" in t for t in texts(ltm, "Where does my sister live?"))
    assert ltm.hot_index_loads == {"persisted": 0, "rebuilt": 1}
    ltm.add_texts("alice", ["I play the cello in a community orchestra."])  # after the load
    ltm.close()
    files = list((tmp_path / "hot_index").glob("*.hidx"))
    assert len(files) == 1

    again, wm2 = make_memory(cfg())  # the restarted process
    assert any("cello" in t for t in texts(again, "Which instrument do I play?"))
    assert any("Pepper" in t for t in texts(again, "What is my dog called?"))
    assert again.hot_index_loads == {"persisted": 1, "rebuilt": 0}
    say(wm2, "alice", "s2", ["Last week I started a pottery class downtown.", "How is it going?"])
    again.archive_session("alice", "s2")
    assert any("pottery" in t for t in texts(again, "What class did I start?"))
    again.close()

    third, _ = make_memory(cfg())
    assert any("pottery" in t for t in texts(third, "What class did I start?"))
    assert any("Lisbon" in t for t in texts(third, "Where does my sister live?"))
    assert third.hot_index_loads == {"persisted": 1, "rebuilt": 0}


def test_a_store_changed_behind_the_file_is_rebuilt(make_memory, tmp_path):
    ltm, wm = make_memory(cfg())
    say(wm, "alice", "s1", TURNS)
    ltm.archive_session("alice", "s1")
    texts(ltm, "sister")
    ltm.close()
    # Another process with its own cache directory writes the user while this one is down.
    other, _ = make_memory(cfg(str(tmp_path / "other-cache")))
    other.add_texts("alice", ["I moved to Porto in January."])
    other.close()

    again, _ = make_memory(cfg())
    assert any("Porto" in t for t in texts(again, "Where did I move?"))
    assert again.hot_index_loads == {"persisted": 0, "rebuilt": 1}


def test_a_damaged_file_is_rebuilt_with_a_warning(make_memory, tmp_path, caplog):
    ltm, wm = make_memory(cfg())
    say(wm, "alice", "s1", TURNS)
    ltm.archive_session("alice", "s1")
    texts(ltm, "sister")
    ltm.close()
    path = next((tmp_path / "hot_index").glob("*.hidx"))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))

    again, _ = make_memory(cfg())
    assert any("Lisbon" in t for t in texts(again, "Where does my sister live?"))
    assert again.hot_index_loads == {"persisted": 0, "rebuilt": 1}
    assert "unreadable" in caplog.text


def test_milvus_versions_record_writes_and_compact(make_memory):
    ltm, _ = make_memory(cfg())
    store = ltm.store
    assert len(store.version("bob")) == 0
    rows = [store.begin_write("bob") for _ in range(5)]
    pending = store.version("bob")
    assert len(pending) == 5 and not pending.settled(0.0)
    for row in rows:
        store.end_write("bob", row)
    done = store.version("bob")
    assert done != pending and done.settled(0.0) and store.version("alice") != done
    compacted = store.compact_versions("bob", done)
    assert compacted is not None and len(compacted) == 1 and compacted == store.version("bob")
    assert compacted.digest not in (done.digest, pending.digest)
