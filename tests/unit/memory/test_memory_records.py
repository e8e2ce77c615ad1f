"""Deterministic ids, the indexed text, the BM25 tokeniser and index."""

from __future__ import annotations

import pytest
from rank_bm25 import BM25Okapi

from dmha.memory.bm25 import BM25Index, tokenize
from dmha.memory.records import MemoryRecord, index_text, memory_id


def test_memory_id_is_deterministic_and_separates_users_kinds_and_sources():
    a = memory_id("alice", "turn", ["t1"])
    assert a == memory_id("alice", "turn", ["t1"]) and len(a) == 32
    assert a != memory_id("bob", "turn", ["t1"])
    assert a != memory_id("alice", "summary", ["t1"])
    assert memory_id("u", "summary", ["ab", "c"]) != memory_id("u", "summary", ["a", "bc"])


def test_index_text_prefixes_the_day():
    rec = MemoryRecord("i", "u", "s", "turn", "I went hiking.", created_at=1683554160.0)
    assert index_text(rec) == "8 May 2023: I went hiking."


def test_tokenize_drops_stopwords_and_stems_lightly():
    assert tokenize("Caroline's paintings: she painted, paints!") == ["carolin", "paint", "paint", "paint"]
    assert tokenize("running races in 2023") == ["run", "rac", "2023"]
    assert tokenize("the and of") == []


def test_bm25_ranks_like_rank_bm25():
    docs = ["the cat sat on the mat", "dogs chase cats", "a bird sang", "cat cat cat food", "mat weaving"]
    toks = [tokenize(d) for d in docs]
    ours = BM25Index()
    for i, t in enumerate(toks):
        ours.add(i, t)
    ref = BM25Okapi(toks)
    query = tokenize("cat mat")
    ref_scores = ref.get_scores(query)
    got = ours.top(query, 5)
    assert [k for k, _ in got] == sorted(
        (i for i in range(len(docs)) if ref_scores[i] > 0), key=lambda i: -ref_scores[i]
    )


def test_bm25_remove_and_compact():
    index = BM25Index()
    index.add(0, ["apple", "pie"])
    index.add(1, ["apple", "tart"])
    index.add(2, ["cherry", "pie"])
    index.remove(0)
    assert [k for k, _ in index.top(["apple"], 5)] == [1]
    assert len(index) == 2
    index.compact({1: 0, 2: 1})
    assert [k for k, _ in index.top(["pie"], 5)] == [1]
    assert [k for k, _ in index.top(["apple"], 5)] == [0]
    with pytest.raises(ValueError, match="already indexed"):
        index.add(0, ["x"])
