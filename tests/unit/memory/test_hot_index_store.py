"""Persisted hot indexes: round trip, version stamps, damaged files, writes after a load."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from memory_fakes import HashEmbedder, MemoryStore

from dmha.config import MemoryConfig, RetrievalConfig
from dmha.memory.bm25 import tokenize
from dmha.memory.hot_index import HotIndex
from dmha.memory.hot_index_store import HotIndexStore
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.records import MemoryRecord
from dmha.memory.user_index import UserIndex
from dmha.memory.versions import StoreVersion, VersionRow

WORDS = [
    "apple",
    "river",
    "mountain",
    "violin",
    "guitar",
    "berlin",
    "lisbon",
    "nurse",
    "painter",
    "garden",
    "cat",
    "dog",
    "train",
    "ocean",
]


def records(n: int, user: str = "u", seed: int = 0) -> list[MemoryRecord]:
    rng = np.random.default_rng(seed)
    emb = HashEmbedder(32)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=6))
        kind = "turn" if i % 5 else "summary"
        out.append(
            MemoryRecord(
                id=f"m{i}",
                user_id=user,
                session_id=f"s{i % 7}",
                kind=kind,
                text=text,
                created_at=1.7e9 + i,
                source_ids=(f"t{i}",) if kind == "turn" else (f"t{i - 1}", f"t{i - 2}"),
                cluster_id=i % 3,
                role="user" if i % 2 else "assistant",
                importance=0.25 + (i % 3) / 4,
                vector=emb.embed([text])[0],
            )
        )
    return out


def same_answers(a: UserIndex, b: UserIndex) -> None:
    """Every read the retriever makes gives the same answer on both indexes."""
    emb = HashEmbedder(32)
    for query in ("apple river", "violin berlin nurse", "ocean train cat"):
        q = emb.embed([query])[0]
        toks = tokenize(query)
        assert a.dense(q, 20) == b.dense(q, 20)
        assert a.lexical(toks, 20) == b.lexical(toks, 20)
        for x, y in zip(a.lexical_in_context(toks), b.lexical_in_context(toks), strict=True):
            np.testing.assert_array_equal(x, y)
        assert a.nearest_clusters(q, 3) == b.nearest_clusters(q, 3)
    assert sorted(a.records(), key=lambda r: r.id) == sorted(b.records(), key=lambda r: r.id)
    assert a.counts() == b.counts() and a.pending() == b.pending() and len(a) == len(b)
    for row in range(0, 200, 7):
        assert a.neighbours(row, 2) == b.neighbours(row, 2)
        assert a.record_at(row) == b.record_at(row)
    assert a.owners("t10") == b.owners("t10")


@pytest.mark.parametrize("ivf_threshold", [10_000, 150])  # exact Faiss, and IVF
def test_round_trip_gives_the_same_answers(tmp_path: Path, ivf_threshold: int) -> None:
    index = UserIndex("u", 32, ivf_threshold)
    index.add(records(300))
    index.remove(["m3", "m4", "m50"])  # tombstones survive the trip
    index.set_clusters({"m7": 2}, np.eye(3, 32, dtype=np.float32), [0, 1, 2])
    version = StoreVersion.of([VersionRow("a" * 32, "done", 1.0)])
    store = HotIndexStore(tmp_path)
    assert store.save(index, version)
    loaded = store.load("u", version)
    assert loaded is not None and loaded.version == version
    same_answers(index, loaded)
    # The loaded index keeps working like a fresh one: adds, removes, compaction.
    more = records(40, seed=9)
    more = [MemoryRecord(**{**r.__dict__, "id": f"x{i}"}) for i, r in enumerate(more)]
    for idx in (index, loaded):
        idx.add(more)
        idx.remove([f"m{i}" for i in range(100, 200)])
    same_answers(index, loaded)


def test_deleted_words_do_not_reach_the_file(tmp_path: Path) -> None:
    index = UserIndex("u", 32)
    recs = records(20)
    secret = MemoryRecord(**{**recs[0].__dict__, "id": "secret", "text": "zanzibarish password"})
    index.add([*recs, secret])
    index.remove(["secret"])
    store = HotIndexStore(tmp_path)
    store.save(index, StoreVersion.of([]))
    raw = store.path("u").read_bytes()
    assert b"zanzibar" not in raw and b"password" not in raw


def test_stale_stamp_is_not_loaded(tmp_path: Path) -> None:
    index = UserIndex("u", 32)
    index.add(records(50))
    store = HotIndexStore(tmp_path)
    v1 = StoreVersion.of([VersionRow("a" * 32, "done", 1.0)])
    store.save(index, v1)
    assert store.load("u", v1) is not None
    assert store.load("u", v1.plus_done("b" * 32, 2.0)) is None  # a write since
    assert store.load("u", StoreVersion.of([VersionRow("a" * 32, "pending", 1.0)])) is None
    assert store.load("someone-else", v1) is None


@pytest.mark.parametrize("where", ["header", "body", "trailer", "truncate", "garbage"])
def test_damaged_file_is_detected_and_ignored(tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture) -> None:
    index = UserIndex("u", 32)
    index.add(records(80))
    store = HotIndexStore(tmp_path)
    version = StoreVersion.of([])
    store.save(index, version)
    path = store.path("u")
    raw = bytearray(path.read_bytes())
    if where == "header":
        raw[20] ^= 0x01
    elif where == "body":
        raw[len(raw) // 2] ^= 0x40
    elif where == "trailer":
        raw[-1] ^= 0xFF
    elif where == "truncate":
        raw = raw[: len(raw) // 3]
    else:
        raw = bytearray(b"not a hot index at all")
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert store.load("u", version) is None
    if where != "header":  # a flipped header bit may also just change the stamp (stale: debug)
        assert "unreadable" in caplog.text


# -- through LongTermMemory: the store's versions, restarts, other writers -------------


def build(store: MemoryStore, directory: Path) -> LongTermMemory:
    cfg = MemoryConfig(retrieval=RetrievalConfig(hot_users=4))
    return LongTermMemory(cfg, store, HashEmbedder(store.dim), persisted=HotIndexStore(directory))


def hot(ltm: LongTermMemory) -> HotIndex:
    return ltm._hot


def found(ltm: LongTermMemory, user: str, query: str) -> list[str]:
    return [m.text for m in ltm.search(user, query, k=5)]


def test_restart_loads_the_persisted_copy_and_sees_writes_before_and_after(tmp_path: Path) -> None:
    store = MemoryStore(64)
    first = build(store, tmp_path)
    first.add_texts("alice", ["My sister Anna lives in Berlin.", "I adopted a cat named Whiskers."])
    assert "My sister Anna lives in Berlin." in found(first, "alice", "sister Berlin")
    assert hot(first).loads == {"persisted": 0, "rebuilt": 1}
    first.add_texts("alice", ["I play the violin on Sundays."])  # after the load: claimed, mirrored
    first.close()

    second = build(store, tmp_path)
    assert "I play the violin on Sundays." in found(second, "alice", "violin Sundays")
    assert "I adopted a cat named Whiskers." in found(second, "alice", "cat Whiskers")
    assert hot(second).loads == {"persisted": 1, "rebuilt": 0}
    second.add_texts("alice", ["Every summer we hike in the Alps."])
    assert "Every summer we hike in the Alps." in found(second, "alice", "summer hike Alps")
    second.close()

    third = build(store, tmp_path)
    assert "Every summer we hike in the Alps." in found(third, "alice", "summer hike Alps")
    assert hot(third).loads == {"persisted": 1, "rebuilt": 0}


def test_a_write_behind_the_copy_forces_a_rebuild(tmp_path: Path) -> None:
    store = MemoryStore(64)
    first = build(store, tmp_path / "a")
    first.add_texts("alice", ["My sister Anna lives in Berlin."])
    found(first, "alice", "sister")
    first.close()
    # Another process (its own cache dir, nothing loaded) writes the same user.
    other = build(store, tmp_path / "b")
    other.add_texts("alice", ["I moved to Lisbon last spring."])
    other.close()
    again = build(store, tmp_path / "a")
    assert "I moved to Lisbon last spring." in found(again, "alice", "moved Lisbon spring")
    assert hot(again).loads == {"persisted": 0, "rebuilt": 1}


def test_an_interleaved_writer_drops_the_claim(tmp_path: Path) -> None:
    store = MemoryStore(64)
    a, b = build(store, tmp_path / "a"), build(store, tmp_path / "b")
    a.add_texts("alice", ["My sister Anna lives in Berlin."])
    found(a, "alice", "sister")
    found(b, "alice", "sister")
    assert hot(a).peek("alice").version is not None
    b.add_texts("alice", ["I moved to Lisbon last spring."])  # a misses this (no announcement here)
    a.add_texts("alice", ["I play the violin."])
    assert hot(a).peek("alice").version is None  # a cannot prove it holds b's write
    a.close()
    c = build(store, tmp_path / "a")
    assert "I moved to Lisbon last spring." in found(c, "alice", "moved Lisbon spring")
    assert hot(c).loads["rebuilt"] == 1


def test_a_write_in_flight_is_never_claimed(tmp_path: Path) -> None:
    store = MemoryStore(64)
    a = build(store, tmp_path)
    a.add_texts("alice", ["My sister Anna lives in Berlin."])
    store.begin_write("alice")  # a writer that began and never finished (crashed, or still going)
    found(a, "alice", "sister")
    assert hot(a).peek("alice").version is None
    assert not HotIndexStore(tmp_path).path("alice").exists()


def test_deleting_memories_deletes_the_persisted_copy(tmp_path: Path) -> None:
    store = MemoryStore(64)
    a = build(store, tmp_path)
    ids = a.add_texts("alice", ["My sister Anna lives in Berlin.", "I adopted a cat named Whiskers."])
    found(a, "alice", "sister")
    path = HotIndexStore(tmp_path).path("alice")
    assert path.exists()
    a.delete("alice", ids[1])
    assert not path.exists()
    a.close()  # persisted again, without the deleted memory
    assert path.exists() and b"Whiskers" not in path.read_bytes()
    b = build(store, tmp_path)
    assert "I adopted a cat named Whiskers." not in found(b, "alice", "cat Whiskers")
    assert hot(b).loads == {"persisted": 1, "rebuilt": 0}
    b.delete_all("alice")
    assert not path.exists()


def test_versions_are_compacted_and_the_claim_survives(tmp_path: Path) -> None:
    store = MemoryStore(64)
    a = build(store, tmp_path)
    a.add_texts("alice", ["first"])
    found(a, "alice", "first")
    for i in range(80):
        a.add_texts("alice", [f"note number {i}"])
    assert len(store.version("alice")) < 70
    assert hot(a).peek("alice").version == store.version("alice")
