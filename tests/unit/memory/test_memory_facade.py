"""LongTermMemory over fakes: validation, isolation, listing, deletion, export, stats."""

from __future__ import annotations

import json

import pytest
from memory_fakes import HashEmbedder, ListWorkingMemory, MemoryStore

from dmha.config import (
    LongTermConfig,
    MemoryConfig,
    RetrievalConfig,
    WorkingMemoryConfig,
)
from dmha.errors import FailedPrecondition, InvalidArgument, NotFound
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.summariser import ExtractiveSummariser
from dmha.turn import Turn

FACTS = [
    "My sister Anna lives in Berlin and works as a nurse.",
    "I adopted an orange cat named Whiskers.",
    "Every summer we go hiking in the Alps.",
    "I started learning the violin in March.",
]


def build(hot_users: int = 8, **retrieval):
    cfg = MemoryConfig(
        working=WorkingMemoryConfig(max_turns=2),
        longterm=LongTermConfig(archive_batch=2, max_text_bytes=100),
        retrieval=RetrievalConfig(hot_users=hot_users, max_query_bytes=64, max_k=20, **retrieval),
    )
    emb = HashEmbedder()
    store = MemoryStore(emb.dim)
    wm = ListWorkingMemory(2)
    return LongTermMemory(cfg, store, emb, working=wm, summariser=ExtractiveSummariser()), store, wm


def chat(wm: ListWorkingMemory, user: str, session: str, texts: list[str], t0: float = 1.7e9) -> None:
    wm.append([Turn(f"{user}-{session}-{i}", user, session, "user", t, t0 + i) for i, t in enumerate(texts)])


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"query": "  "}, "query", "must not be empty"),
        ({"query": "x" * 65}, "query", "65 bytes; limit 64"),
        ({"k": 0}, "k", "between 1 and 20"),
        ({"k": 21}, "k", "between 1 and 20"),
        ({"token_budget": 0}, "token_budget", "at least 1"),
        ({"kinds": ["note"]}, "kind", "expected one of"),
        ({"user_id": ""}, "user_id", "must be 1-128 characters"),
    ],
)
def test_search_rejects_bad_input_naming_field_and_limit(kwargs, field, fragment):
    ltm, _, _ = build()
    args = {"user_id": "alice", "query": "cat", "k": 3, **kwargs}
    with pytest.raises(InvalidArgument) as err:
        ltm.search(args.pop("user_id"), args.pop("query"), **args)
    assert err.value.field == field and fragment in str(err.value)


def test_add_texts_validates_and_is_idempotent():
    ltm, store, _ = build()
    with pytest.raises(InvalidArgument, match=r"texts\[1\]: is 101 bytes; limit 100"):
        ltm.add_texts("alice", ["ok", "y" * 101])
    with pytest.raises(InvalidArgument, match="texts: must not be empty"):
        ltm.add_texts("alice", [])
    first = ltm.add_texts("alice", ["Alice is vegan."])
    again = ltm.add_texts("alice", ["Alice  is vegan. "])
    assert first == again and len(store.rows) == 1


@pytest.mark.parametrize("hot_users", [8, 0])
def test_two_users_with_the_same_words_never_see_each_other(hot_users):
    ltm, _, wm = build(hot_users=hot_users)
    for user in ("alice", "bob"):
        chat(wm, user, "s", [f"{user} says: {f}" for f in FACTS])
        ltm.archive_session(user, "s")
    for user, other in (("alice", "bob"), ("bob", "alice")):
        hits = ltm.search(user, "Where does my sister live? Anna Berlin", k=20)
        assert hits and all(h.text.startswith(user) or h.kind != "turn" for h in hits)
        assert all(other not in h.text for h in hits)
        ids = {r.id for r in ltm.list(user, page_size=100).items}
        for rec in ltm.list(other, page_size=100).items:
            assert rec.id not in ids
            with pytest.raises(NotFound):
                ltm.get(user, rec.id)
            with pytest.raises(NotFound):
                ltm.delete(user, rec.id)
        assert all(d["user_id"] == user for d in ltm.export(user))


def test_search_finds_the_fact_and_explains_why():
    ltm, _, wm = build()
    chat(wm, "alice", "s", FACTS)
    ltm.archive_session("alice", "s")
    hits = ltm.search("alice", "violin March", k=3)
    assert any("violin" in h.text for h in hits)
    assert all(h.why and h.why != "none" for h in hits)
    assert all(h.score > 0 for h in hits)


def test_list_pages_newest_first_with_opaque_tokens_and_filters():
    ltm, _, wm = build()
    chat(wm, "alice", "s1", FACTS[:2], t0=1.0e9)
    chat(wm, "alice", "s2", FACTS[2:], t0=2.0e9)
    ltm.archive_session("alice", "s1")
    ltm.archive_session("alice", "s2")
    seen, token = [], ""
    while True:
        page = ltm.list("alice", page_size=2, page_token=token)
        seen += page.items
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len({r.id for r in seen}) == 6
    assert [r.created_at for r in seen] == sorted((r.created_at for r in seen), reverse=True)
    assert {r.kind for r in ltm.list("alice", 10, kind="summary").items} == {"summary"}
    assert {r.session_id for r in ltm.list("alice", 10, session_id="s1").items} == {"s1"}
    with pytest.raises(InvalidArgument, match="page_token"):
        ltm.list("alice", 2, page_token="not-a-token")
    with pytest.raises(InvalidArgument, match="page_size"):
        ltm.list("alice", 0)


def test_deleting_a_turn_deletes_the_summaries_quoting_it():
    ltm, store, wm = build()
    chat(wm, "alice", "s", FACTS[:2])
    ltm.archive_session("alice", "s")
    turn = next(r for r in store.rows.values() if r.kind == "turn" and "sister" in r.text)
    deleted = ltm.delete("alice", turn.id)
    assert deleted[0] == turn.id and len(deleted) == 2  # the turn and its batch summary
    assert all("sister" not in r.text for r in store.rows.values())
    assert all("sister" not in h.text for h in ltm.search("alice", "sister Anna Berlin", k=5))
    with pytest.raises(NotFound):
        ltm.get("alice", turn.id)


def test_delete_session_and_delete_all():
    ltm, store, wm = build()
    chat(wm, "alice", "s1", FACTS[:2])
    chat(wm, "alice", "s2", FACTS[2:])
    chat(wm, "bob", "s1", FACTS[:2])
    for user, sid in (("alice", "s1"), ("alice", "s2"), ("bob", "s1")):
        ltm.archive_session(user, sid)
    assert ltm.delete_session("alice", "s1") == 3
    assert {r.session_id for r in ltm.list("alice", 50).items} == {"s2"}
    assert ltm.delete_all("alice") == 3
    assert ltm.stats("alice").total == 0
    assert ltm.stats("bob").total == 3  # untouched


def test_export_is_jsonl_able_and_stats_count_kinds():
    ltm, _, wm = build()
    chat(wm, "alice", "s", FACTS)
    ltm.archive_session("alice", "s")
    ltm.add_texts("alice", ["Alice is vegan."])
    rows = list(ltm.export("alice"))
    assert all(json.loads(json.dumps(r)) == r for r in rows)
    assert {"id", "kind", "text", "source_ids", "created_at", "cluster_id"} <= rows[0].keys()
    stats = ltm.stats("alice")
    assert stats.total == 7 and stats.by_kind["turn"] == 4 and stats.by_kind["summary"] == 2
    assert stats.by_kind["fact"] == 1 and stats.sessions == 1 and stats.unclustered == 7


def test_token_budget_limits_what_search_returns():
    ltm, _, wm = build()
    chat(wm, "alice", "s", FACTS)
    ltm.archive_session("alice", "s")
    hits = ltm.search("alice", "sister cat hiking violin", k=10, token_budget=20)
    assert hits and sum(len(h.text.encode()) for h in hits) <= 20 * 4


def test_archive_needs_a_working_memory():
    cfg = MemoryConfig()
    emb = HashEmbedder()
    ltm = LongTermMemory(cfg, MemoryStore(emb.dim), emb)
    with pytest.raises(FailedPrecondition):
        ltm.archive_overflow("alice", "s")
