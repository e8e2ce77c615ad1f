"""Archival: summary linking, whole batches, crash safety, Milvus down (fakes only)."""

from __future__ import annotations

import pytest
from memory_fakes import HashEmbedder, ListWorkingMemory, MemoryStore

from dmha.config import (
    ClusteringConfig,
    LongTermConfig,
    MemoryConfig,
    WorkingMemoryConfig,
)
from dmha.errors import MilvusUnavailable, Unavailable
from dmha.memory.archival import build_records
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.records import memory_id
from dmha.memory.summariser import ExtractiveSummariser
from dmha.turn import Turn


def turns(n: int, user: str = "alice", session: str = "s1", start: int = 0) -> list[Turn]:
    return [
        Turn(
            f"t{i:04d}",
            user,
            session,
            "user" if i % 2 == 0 else "assistant",
            f"Message number {i} about topic{i % 3}.",
            1_700_000_000.0 + i,
        )
        for i in range(start, start + n)
    ]


def build(max_turns: int = 4, batch: int = 3, summariser=None, every: int = 200):
    cfg = MemoryConfig(
        working=WorkingMemoryConfig(max_turns=max_turns),
        longterm=LongTermConfig(archive_batch=batch),
        clustering=ClusteringConfig(every_n_memories=every),
    )
    emb = HashEmbedder()
    store = MemoryStore(emb.dim)
    wm = ListWorkingMemory(max_turns)
    ltm = LongTermMemory(cfg, store, emb, working=wm, summariser=summariser or ExtractiveSummariser())
    return ltm, store, wm


def test_build_records_links_each_summary_to_its_batch():
    ts = turns(5)
    recs = build_records(ts, 2, lambda batch: " / ".join(t.text for t in batch))
    kinds = [r.kind for r in recs]
    # A last batch of one turn gets no summary.
    assert kinds == ["turn", "turn", "summary", "turn", "turn", "summary", "turn"]
    first = recs[2]
    assert first.source_ids == ("t0000", "t0001")
    assert first.id == memory_id("alice", "summary", ["t0000", "t0001"])
    assert recs[0].id == memory_id("alice", "turn", ["t0000"]) and recs[0].source_ids == ("t0000",)
    assert first.created_at == ts[1].created_at and first.session_id == "s1"


def test_overflow_archives_only_whole_batches_then_trims():
    ltm, store, wm = build(max_turns=4, batch=3)
    wm.append(turns(6))  # 2 over the cap: less than a batch
    assert ltm.archive_overflow("alice", "s1").archived_turns == 0
    wm.append(turns(2, start=6))  # 4 over: one batch of 3
    report = ltm.archive_overflow("alice", "s1")
    assert (report.archived_turns, report.summaries, report.trimmed) == (3, 1, 3)
    assert [t.turn_id for t in wm.all_turns("alice", "s1")][0] == "t0003"
    assert sorted(r.kind for r in store.rows.values()) == ["summary", "turn", "turn", "turn"]


def test_session_end_archives_everything_including_a_partial_batch():
    ltm, store, wm = build(max_turns=10, batch=3)
    wm.append(turns(5))
    report = ltm.archive_session("alice", "s1")
    assert (report.archived_turns, report.summaries) == (5, 2)
    assert wm.all_turns("alice", "s1") == []


def test_milvus_down_raises_and_keeps_every_turn_in_working_memory():
    ltm, store, wm = build(max_turns=2, batch=2)
    wm.append(turns(6))
    store.fail = True
    with pytest.raises(MilvusUnavailable):
        ltm.archive_overflow("alice", "s1")
    assert len(wm.all_turns("alice", "s1")) == 6 and wm.trims == 0
    store.fail = False
    assert ltm.archive_overflow("alice", "s1").archived_turns == 4


def test_crash_between_store_and_trim_reruns_without_duplicates():
    ltm, store, wm = build(max_turns=2, batch=2)
    wm.append(turns(6))
    real_trim = wm.trim

    def crash(*args, **kwargs):
        raise RuntimeError("process died before trimming")

    wm.trim = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        ltm.archive_overflow("alice", "s1")
    stored = dict(store.rows)
    assert len(stored) == 6  # 4 turns + 2 summaries acknowledged, turns still in Redis
    wm.trim = real_trim  # type: ignore[method-assign]
    report = ltm.archive_overflow("alice", "s1")
    assert report.archived_turns == 4 and report.trimmed == 4
    assert set(store.rows) == set(stored)  # same ids: upserted again, not duplicated
    assert len(wm.all_turns("alice", "s1")) == 2


def test_failing_summariser_falls_back_to_extractive():
    class Broken:
        def __call__(self, batch):
            raise Unavailable("llm down")

    ltm, store, wm = build(max_turns=2, batch=2, summariser=Broken())
    wm.append(turns(4))
    assert ltm.archive_overflow("alice", "s1").summaries == 1
    summary = next(r for r in store.rows.values() if r.kind == "summary")
    assert "Message number" in summary.text


def test_recluster_due_after_enough_new_memories():
    ltm, _, wm = build(max_turns=2, batch=2, every=5)
    wm.append(turns(4))
    assert not ltm.archive_overflow("alice", "s1").recluster_due  # 3 memories
    wm.append(turns(2, start=4))
    assert ltm.archive_overflow("alice", "s1").recluster_due  # 6 pending
    ltm.recluster("alice")
    wm.append(turns(2, start=6))
    assert not ltm.archive_overflow("alice", "s1").recluster_due
