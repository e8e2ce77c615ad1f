"""Issue 12: turns read in context (BM25 over a turn and the one before it), neighbour
links, score fusion, and budget packing that never overruns."""

from __future__ import annotations

import numpy as np
import pytest
from memory_fakes import HashEmbedder

from dmha.config import RetrievalConfig
from dmha.memory.bm25 import BM25Index, tokenize
from dmha.memory.hot_index import UserIndex
from dmha.memory.records import MemoryRecord, index_text
from dmha.memory.retrieval import Candidate, Retriever, approx_token_count, pack

EMB = HashEmbedder()

DIALOGUE = [
    "Nate: What genre is your first screenplay?",
    "Joanna: It's a mix of drama and romance!",
    "Nate: Cool. My turtles love lettuce.",
    "Joanna: Ha, I bet they do.",
    "Nate: I won a video game tournament last week.",
    "Joanna: Congrats, you deserve it.",
]


def turn(i: int, text: str, session: str = "s1", t: float | None = None) -> MemoryRecord:
    return MemoryRecord(
        id=f"m{i}",
        user_id="u",
        session_id=session,
        kind="turn",
        text=text,
        created_at=1.7e9 + (i if t is None else t),
        source_ids=(f"t{i}",),
        vector=EMB.embed([text])[0],
    )


def dialogue_index(order: list[int] | None = None) -> UserIndex:
    index = UserIndex("u", EMB.dim)
    order = order if order is not None else list(range(len(DIALOGUE)))
    for i in order:  # one at a time, in the given order: links must follow time, not arrival
        index.add([turn(i, DIALOGUE[i])])
    return index


def ids(index: UserIndex, rows) -> list[str]:
    return [index.record_at(int(r)).id for r in rows]


def test_bm25_in_context_lends_the_previous_document_its_words():
    bm = BM25Index()
    docs = [tokenize(t) for t in ("what genre is your screenplay", "a mix of drama and romance", "turtles eat lettuce")]
    for i, d in enumerate(docs):
        bm.add(i, d)
    successor = np.array([1, 2, -1])
    lengths = np.array([len(docs[0]), len(docs[0]) + len(docs[1]), len(docs[1]) + len(docs[2])], dtype=np.float32)
    keys, _ = bm.scores(tokenize("screenplay genre"))
    assert keys.tolist() == [0]
    keys, scores = bm.context_scores(tokenize("screenplay genre"), successor, lengths)
    assert keys.tolist() == [0, 1] and scores[0] > 0 and scores[1] > 0
    bm.remove(0)  # a removed document lends nothing
    keys, _ = bm.context_scores(tokenize("screenplay genre"), successor, lengths)
    assert keys.tolist() == []


@pytest.mark.parametrize("order", [None, [5, 3, 1, 0, 2, 4]])
def test_user_index_links_turns_by_time_whatever_the_arrival_order(order):
    index = dialogue_index(order)
    row = index.row_of("m2")
    assert ids(index, index.neighbours(row)) == ["m1", "m3"]
    assert ids(index, index.neighbours(row, 2)) == ["m0", "m4"]
    before, after = index.around(np.array([index.row_of("m0"), index.row_of("m5")]), 1)
    assert before[0] == -1 and after[1] == -1
    assert ids(index, [after[0], before[1]]) == ["m1", "m4"]


def test_lexical_in_context_finds_the_reply_and_forgets_a_deleted_question():
    index = dialogue_index()
    plain, _ = index.lexical_scores(tokenize("What genre is the screenplay?"))
    assert ids(index, plain) == ["m0"]
    rows, _ = index.lexical_in_context(tokenize("What genre is the screenplay?"))
    assert ids(index, rows) == ["m0", "m1"]
    index.remove(["m0"])
    rows, _ = index.lexical_in_context(tokenize("screenplay genre"))
    assert ids(index, rows) == []  # the reply no longer borrows the deleted question's words
    assert ids(index, index.neighbours(index.row_of("m1"))) == ["m2"]


def test_sessions_are_not_linked_to_each_other():
    index = UserIndex("u", EMB.dim)
    index.add([turn(0, "a first session line", "s1"), turn(1, "a second session line", "s2", t=0.5)])
    assert index.neighbours(index.row_of("m0")) == [] and index.neighbours(index.row_of("m1")) == []


def test_score_fusion_ranks_the_answer_beside_the_matching_line():
    index = dialogue_index()
    query = "What genre is Joanna's first screenplay?"
    vector = EMB.embed([query])[0]
    cands = Retriever(RetrievalConfig()).rank(index, vector, query)
    top = [c.record.id for c in cands[:2]]
    assert set(top) == {"m0", "m1"}
    without = Retriever(RetrievalConfig(neighbour_weights=[], lexical_context=False)).rank(index, vector, query)
    rank = [c.record.id for c in without].index("m1")
    assert rank > [c.record.id for c in cands].index("m1")
    assert all(c.signals for c in cands)


def test_score_fusion_keeps_facts_and_respects_kinds():
    index = dialogue_index()
    fact = MemoryRecord(
        id="f1",
        user_id="u",
        session_id="",
        kind="fact",
        text="Joanna's screenplay is called Shadows",
        created_at=1.7e9,
        vector=EMB.embed(["Joanna's screenplay is called Shadows"])[0],
    )
    index.add([fact])
    query = "What is Joanna's screenplay called?"
    vector = EMB.embed([query])[0]
    cands = Retriever(RetrievalConfig()).rank(index, vector, query)
    assert cands[0].record.id == "f1"
    turns_only = Retriever(RetrievalConfig()).rank(index, vector, query, frozenset({"turn"}))
    assert turns_only and all(c.record.kind == "turn" for c in turns_only)


def test_index_text_is_what_bm25_reads():
    rec = turn(0, DIALOGUE[0])
    assert index_text(rec).endswith(DIALOGUE[0])


@pytest.mark.parametrize("seed", range(20))
def test_budget_packing_never_exceeds_the_budget(seed):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(40):
        kind = "summary" if rng.random() < 0.2 else "turn"
        words = " ".join(f"w{int(x)}" for x in rng.integers(0, 60, size=int(rng.integers(1, 80))))
        sources = tuple(f"t{int(x)}" for x in rng.integers(0, 30, size=3)) if kind == "summary" else (f"t{i}",)
        records.append(
            MemoryRecord(
                id=f"r{i}", user_id="u", session_id="s", kind=kind, text=words, created_at=0.0, source_ids=sources
            )
        )
    budget = int(rng.integers(1, 400))
    out = pack(
        [Candidate(r, 1.0 / (i + 1), {"dense": i + 1}) for i, r in enumerate(records)], k=100, token_budget=budget
    )
    assert sum(approx_token_count(m.text) for m in out) <= budget
    assert len({m.id for m in out}) == len(out)
