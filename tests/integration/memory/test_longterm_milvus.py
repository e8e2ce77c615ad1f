"""Long-term memory on real Redis, real Milvus Lite and the real embedder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dmha.config import (
    ClusteringConfig,
    LongTermConfig,
    MemoryConfig,
    WorkingMemoryConfig,
)
from dmha.errors import MilvusUnavailable, NotFound, StartupError
from dmha.memory.records import MemoryRecord, memory_id
from dmha.memory.store import MilvusLongTermStore
from dmha.turn import Turn, new_turn_id

pytestmark = pytest.mark.integration

FACTS = [
    "My sister Margaret lives in Lisbon and teaches chemistry.",
    "Nice! Do you visit her often?",
    "I adopted a beagle named Pepper last spring.",
    "What does Pepper like to do?",
    "Pepper loves chasing squirrels in the park.",
    "Yesterday I baked sourdough bread for the first time.",
    "How did the bread turn out?",
    "The crust was perfect but the crumb was dense.",
]


def small_cfg(**longterm) -> MemoryConfig:
    return MemoryConfig(
        working=WorkingMemoryConfig(max_turns=2),
        longterm=LongTermConfig(archive_batch=2, timeout_seconds=3, **longterm),
    )


def say(wm, user: str, session: str, texts: list[str]) -> list[Turn]:
    turns = [
        Turn(new_turn_id(), user, session, "user" if i % 2 == 0 else "assistant", t, 1.7e9 + i)
        for i, t in enumerate(texts)
    ]
    for t in turns:
        wm.append([t])
    return turns


def test_archive_search_delete_export_round_trip(make_memory):
    ltm, wm = make_memory(small_cfg())
    say(wm, "alice", "s1", FACTS)
    report = ltm.archive_overflow("alice", "s1")
    assert report.archived_turns == 6 and report.summaries == 3 and report.trimmed == 6
    assert len(wm.all_turns("alice", "s1")) == 2  # the cap stays in Redis
    ltm.archive_session("alice", "s1")
    assert wm.all_turns("alice", "s1") == []

    hits = ltm.search("alice", "Where does my sister live?", k=5)
    assert any("Lisbon" in h.text for h in hits)
    assert all(h.why and h.id for h in hits)
    exported = list(ltm.export("alice"))
    assert len(exported) == 12 and {r["kind"] for r in exported} == {"turn", "summary"}

    lisbon = next(r for r in exported if r["kind"] == "turn" and "Lisbon" in r["text"])
    assert ltm.get("alice", lisbon["id"]).text == lisbon["text"]
    deleted = ltm.delete("alice", lisbon["id"])
    assert lisbon["id"] in deleted and len(deleted) == 2  # with its summary
    assert all("Lisbon" not in r["text"] for r in ltm.export("alice"))
    assert all("Lisbon" not in h.text for h in ltm.search("alice", "sister Lisbon", k=10))
    with pytest.raises(NotFound):
        ltm.get("alice", lisbon["id"])
    assert ltm.delete_session("alice", "s1") == 10
    assert list(ltm.export("alice")) == []


def test_two_users_same_words_zero_cross_hits(make_memory):
    ltm, wm = make_memory(small_cfg())
    users = ["alice", "alice@example.com"]  # same prefix; ids with quotes are refused by dmha.ids
    for user in users:
        say(wm, user, "s", FACTS[:4])
        ltm.archive_session(user, "s")
    ltm.add_texts(users[1], ["My sister Margaret lives in Lisbon."])
    for user in users:
        mine = {r["id"] for r in ltm.export(user)}
        assert mine and all(r["user_id"] == user for r in ltm.export(user))
        for q in ("sister Margaret Lisbon", "beagle Pepper"):
            assert {h.id for h in ltm.search(user, q, k=20)} <= mine
        # The Milvus path itself (hot index bypassed) is filtered too.
        vec = ltm._embedder.embed(["sister Margaret Lisbon"])[0]
        assert {r.id for r, _ in ltm.store.search(user, vec, 50)} <= mine
    other = {r["id"] for r in ltm.export(users[1])}
    for mid in other:
        with pytest.raises(NotFound):
            ltm.get("alice", mid)
    assert ltm.delete_all("alice") == 6
    assert {r["id"] for r in ltm.export(users[1])} == other


def test_crash_between_milvus_insert_and_redis_trim_loses_and_duplicates_nothing(make_memory):
    ltm, wm = make_memory(small_cfg())
    turns = say(wm, "alice", "s", FACTS[:6])
    real_trim = wm.trim
    wm.trim = lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed before trim"))  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        ltm.archive_overflow("alice", "s")
    assert len(wm.all_turns("alice", "s")) == 6  # nothing left Redis
    assert ltm.store.count("alice") == 6  # 4 turns + 2 summaries acknowledged by Milvus
    wm.trim = real_trim  # type: ignore[method-assign]
    report = ltm.archive_overflow("alice", "s")
    assert report.archived_turns == 4 and report.trimmed == 4
    assert ltm.store.count("alice") == 6  # upserted again under the same ids
    ltm.archive_session("alice", "s")
    texts = sorted(r["text"] for r in ltm.export("alice") if r["kind"] == "turn")
    assert texts == sorted(t.text for t in turns)


def test_concurrent_archival_never_takes_the_newest_turns(make_memory):
    """Every committed turn starts a background archival; two of them on one session
    once archived the newest turns too (length and range were read apart, and a trim
    in between shifted the list), and the session vanished from working memory."""
    ltm, wm = make_memory(small_cfg())
    turns = say(wm, "alice", "s", FACTS)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ltm.archive_overflow("alice", "s"), range(16)))
    assert [t.turn_id for t in wm.all_turns("alice", "s")] == [t.turn_id for t in turns[-2:]]
    archived = {r["text"] for r in ltm.export("alice") if r["kind"] == "turn"}
    assert archived == {t.text for t in turns[:-2]}


def test_milvus_down_archival_raises_and_keeps_turns(make_memory, tmp_path):
    from milvus_lite.server_manager import server_manager_instance

    ltm, wm = make_memory(small_cfg())
    say(wm, "alice", "s", FACTS[:6])
    server_manager_instance.release_server(str(tmp_path / "milvus.db"))  # Milvus goes away
    with pytest.raises(MilvusUnavailable):
        ltm.archive_overflow("alice", "s")
    assert len(wm.all_turns("alice", "s")) == 6


def test_restart_rebuilds_the_hot_index_from_milvus(make_memory, embedder, tmp_path):
    ltm, wm = make_memory(small_cfg())
    say(wm, "alice", "s", FACTS)
    ltm.archive_session("alice", "s")
    ltm.close()
    again, _ = make_memory(small_cfg())
    assert again.stats("alice").total == 12
    assert any("beagle" in h.text for h in again.search("alice", "What kind of dog do I have?", k=3))


def test_clustering_job_finds_known_blobs_and_writes_ids_back(make_memory):
    cfg = MemoryConfig(clustering=ClusteringConfig(min_cluster_size=5, pca_dims=16))
    ltm, _ = make_memory(cfg)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 384)).astype(np.float32)
    records = []
    for i in range(240):
        blob = i % 4
        v = centres[blob] / np.linalg.norm(centres[blob]) + 0.04 * rng.standard_normal(384)
        records.append(
            MemoryRecord(
                id=memory_id("alice", "turn", [f"t{i}"]),
                user_id="alice",
                session_id=f"s{blob}",
                kind="turn",
                text=f"topic {blob} note {i}",
                created_at=float(i),
                source_ids=(f"t{i}",),
                vector=(v / np.linalg.norm(v)).astype(np.float32),
            )
        )
    ltm.store.upsert(records)
    report = ltm.recluster("alice")
    assert (report.memories, report.clusters, report.summaries) == (240, 4, 4)
    stored = {r.id: r for r in ltm.store.scan("alice")}
    by_blob: dict[str, set[int]] = {}
    for r in stored.values():
        if r.kind == "turn":
            by_blob.setdefault(r.session_id, set()).add(r.cluster_id)
    assert all(len(ids) == 1 and min(ids) >= 0 for ids in by_blob.values())
    assert len({next(iter(ids)) for ids in by_blob.values()}) == 4
    summaries = [r for r in stored.values() if r.kind == "cluster_summary"]
    assert len(summaries) == 4 and all(s.source_ids for s in summaries)
    assert ltm.stats("alice").clusters == 4 and ltm.stats("alice").unclustered == 0
    again = ltm.recluster("alice")  # a rerun replaces, never piles up, cluster summaries
    assert again.clusters == 4
    rerun = {r.id: r for r in ltm.store.scan("alice")}
    assert sum(r.kind == "cluster_summary" for r in rerun.values()) == 4
    # Cluster ids are stable across runs: the same memberships keep the same ids.
    assert all(rerun[i].cluster_id == r.cluster_id for i, r in stored.items() if r.kind == "turn")


def test_locked_database_is_a_startup_error_naming_the_path(tmp_path):
    db = tmp_path / "milvus.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys
            from milvus_lite import MilvusLite
            db = MilvusLite({str(db)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StartupError) as err:
            MilvusLongTermStore(LongTermConfig(), tmp_path, 384)
        assert str(db) in str(err.value) and "locked" in str(err.value)
    finally:
        holder.communicate("", timeout=30)


def test_corrupt_database_is_a_startup_error_naming_the_path(tmp_path):
    (tmp_path / "milvus.db").write_text("not a database")
    with pytest.raises(StartupError) as err:
        MilvusLongTermStore(LongTermConfig(), tmp_path, 384)
    assert str(tmp_path / "milvus.db") in str(err.value)
    bad = tmp_path / "other"
    bad.mkdir()
    store = MilvusLongTermStore(LongTermConfig(uri=str(bad / "m.db")), tmp_path, 384)
    store.close()
    for manifest in (bad / "m.db" / "collections" / "dmha_memories").glob("manifest.json*"):
        manifest.write_text("{garbage")
    with pytest.raises(StartupError) as err:
        MilvusLongTermStore(LongTermConfig(uri=str(bad / "m.db")), tmp_path, 384)
    assert str(bad / "m.db") in str(err.value)


def test_dimension_mismatch_is_a_startup_error(tmp_path):
    MilvusLongTermStore(LongTermConfig(), tmp_path, 384).close()
    with pytest.raises(StartupError, match="384-d vectors"):
        MilvusLongTermStore(LongTermConfig(), tmp_path, 768)


def test_server_style_scan_pages_by_id_ranges_without_relying_on_order(tmp_path, monkeypatch):
    """The remote-Milvus path: limited queries, split by id ranges when a page is full."""
    import dmha.memory.store as longterm

    store = MilvusLongTermStore(LongTermConfig(), tmp_path, 8)
    try:
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((300, 8)).astype(np.float32)
        store.upsert(
            [
                MemoryRecord(
                    memory_id(u, "turn", [f"t{i}"]), u, "s", "turn", f"note {i}", float(i), (f"t{i}",), vector=vecs[i]
                )
                for i in range(300)
                for u in (("alice",) if i % 3 else ("bob",))
            ]
        )
        monkeypatch.setattr(longterm, "_PAGE", 37)  # many full pages
        monkeypatch.setattr(store, "_local", False)
        ids = [r.id for r in store.scan("alice")]
        assert len(ids) == 200 and ids == sorted(ids) and len(set(ids)) == 200
        assert len(store.delete_where("bob")) == 100
        assert [r.id for r in store.scan("alice")] == ids
    finally:
        store.close()


def test_opening_milvus_lite_logs_no_traceback(tmp_path, caplog):
    """Issue 11, finding 13: every start logged three "Method not implemented" tracebacks."""
    import logging

    with caplog.at_level(logging.INFO):
        store = MilvusLongTermStore(LongTermConfig(), tmp_path, 8)  # creates the collection and its indexes
        store.probe(3.0)
        store.close()
        MilvusLongTermStore(LongTermConfig(), tmp_path, 8).close()  # and opens an existing one
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    # The filter is narrow: another error on the same logger still gets through.
    logging.getLogger("grpc._server").error("a real failure")
    assert any(r.getMessage() == "a real failure" for r in caplog.records)
