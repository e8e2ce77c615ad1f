"""Hot index (Faiss + BM25 + links), clustering on known blobs, the extractive summariser."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dmha.config import ClusteringConfig
from dmha.memory.clustering import Clusterer, stable_ids
from dmha.memory.hot_index import HotIndex, UserIndex
from dmha.memory.records import CLUSTER_NOISE, MemoryRecord
from dmha.memory.summariser import ExtractiveSummariser, extract_sentences
from dmha.turn import Turn


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(n_per: int, centres: int, dim: int = 48, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = unit(rng, centres, dim)
    labels = np.repeat(np.arange(centres), n_per)
    x = c[labels] + spread * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def rec(
    i: int,
    vec: np.ndarray,
    text: str = "",
    kind: str = "turn",
    session: str = "s",
    sources: tuple[str, ...] | None = None,
    user: str = "u",
) -> MemoryRecord:
    return MemoryRecord(
        id=f"m{i}",
        user_id=user,
        session_id=session,
        kind=kind,  # type: ignore[arg-type]
        text=text or f"memory {i}",
        created_at=float(i),
        source_ids=(f"t{i}",) if sources is None else sources,
        vector=vec,
    )


def test_user_index_dense_lexical_links_and_neighbours():
    rng = np.random.default_rng(0)
    vecs = unit(rng, 4, 16)
    index = UserIndex("u", 16)
    index.add([rec(0, vecs[0], "apples"), rec(1, vecs[1], "pears"), rec(2, vecs[2], "plums")])
    index.add([rec(3, vecs[3], "fruit summary", kind="summary", sources=("t0", "t1"))])
    assert index.dense(vecs[1], 1)[0][0] == index.row_of("m1")
    assert [index.record_at(r).id for r, _ in index.lexical(["pear"], 5)] == ["m1"]
    assert index.owners("t0") == {"m0", "m3"}
    assert [index.record_at(r).id for r in index.neighbours(index.row_of("m1"))] == ["m0", "m2"]
    with pytest.raises(ValueError, match="own user"):
        index.add([rec(9, vecs[0], user="other")])


def test_user_index_replace_remove_and_compact_keep_results_right():
    rng = np.random.default_rng(1)
    vecs = unit(rng, 300, 16)
    index = UserIndex("u", 16)
    index.add([rec(i, vecs[i], f"word{i}") for i in range(300)])
    index.add([rec(5, vecs[7], "replaced")])  # same id: replaced, not duplicated
    assert len(index) == 300 and index.get("m5").text == "replaced"
    assert index.remove([f"m{i}" for i in range(0, 200)]) == 200  # triggers compaction
    assert len(index) == 100
    hits = index.dense(vecs[250], 3)
    assert index.record_at(hits[0][0]).id == "m250"
    assert [index.record_at(r).id for r, _ in index.lexical(["word260"], 3)] == ["m260"]
    assert index.get("m10") is None and index.owners("t10") == set()


def test_user_index_switches_to_ivf_above_the_threshold():
    rng = np.random.default_rng(2)
    vecs = unit(rng, 1500, 16)
    index = UserIndex("u", 16, ivf_threshold=1000)
    index.add([rec(i, vecs[i]) for i in range(900)])
    index.add([rec(i, vecs[i]) for i in range(900, 1500)])
    assert type(index._faiss).__name__ == "IndexIVFFlat"
    found = sum(index.record_at(index.dense(vecs[i], 1)[0][0]).id == f"m{i}" for i in range(0, 1500, 50))
    assert found >= 27  # IVF is approximate, but an exact self-match is nearly always found


def test_hot_index_loads_on_first_use_and_evicts_least_recently_used():
    loads: list[str] = []
    rng = np.random.default_rng(3)

    def loader(user: str):
        loads.append(user)
        return [rec(0, unit(rng, 1, 8)[0], user=user)]

    hot = HotIndex(loader, dim=8, capacity=2)
    a = hot.get("a")
    hot.get("b")
    assert hot.get("a") is a  # cached: no reload
    hot.get("c")  # evicts b (a was used more recently)
    assert hot.loaded_users() == ["a", "c"] and loads == ["a", "b", "c"]
    hot.get("b")
    assert loads == ["a", "b", "c", "b"]
    assert HotIndex(loader, dim=8, capacity=0).get("a") is None


def test_clusterer_recovers_known_blobs():
    x, labels = blobs(40, 5)
    result = Clusterer(ClusteringConfig(min_cluster_size=5, pca_dims=8)).fit(x)
    assert result.clusters == 5
    assert adjusted_rand_score(labels, result.labels) > 0.95
    central = result.central_members(x, int(result.labels[0]), 3)
    assert len(central) == 3 and all(result.labels[i] == result.labels[0] for i in central)


def test_clusterer_fits_a_sample_and_assigns_the_rest_through_faiss():
    x, labels = blobs(100, 4, seed=5)
    far = unit(np.random.default_rng(9), 5, x.shape[1])  # points near no cluster
    data = np.vstack([x, far])
    result = Clusterer(ClusteringConfig(min_cluster_size=5, pca_dims=8, max_fit_points=150)).fit(data)
    assert result.clusters == 4
    assert adjusted_rand_score(labels, result.labels[:400]) > 0.95
    assert np.all(result.labels[400:] == CLUSTER_NOISE)


def test_clusterer_too_few_points_is_all_noise():
    x, _ = blobs(3, 1)
    result = Clusterer(ClusteringConfig(min_cluster_size=5)).fit(x)
    assert result.clusters == 0 and np.all(result.labels == CLUSTER_NOISE)


def test_extractive_summary_is_deterministic_short_and_keeps_one_off_facts():
    texts = [
        "Hey! How are you?",
        "I adopted a cat named Whiskers last week.",
        "What colour is Whiskers?",
        "Whiskers is orange with white paws.",
        "My sister Anna lives in Berlin and works as a nurse.",
        "Thanks!",
    ]
    turns = [Turn(f"t{i}", "u", "s", "user", t, float(i)) for i, t in enumerate(texts)]
    summariser = ExtractiveSummariser(max_chars=600, ratio=0.7)
    out = summariser(turns)
    assert out == summariser(turns)
    assert "Berlin" in out and "Whiskers" in out
    assert "Thanks" not in out and "How are you" not in out
    assert len(out) <= 0.7 * sum(len(t) for t in texts) + 10


def test_extract_sentences_respects_the_budget_and_source_order():
    picked = extract_sentences(["Alpha beta gamma. Delta epsilon zeta.", "Eta theta iota kappa."], 40)
    assert sum(len(s) for _, s in picked) <= 40 + len(picked)
    assert [ti for ti, _ in picked] == sorted(ti for ti, _ in picked)


def test_stable_ids_keep_majority_ids_and_mint_fresh_ones():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1])
    previous = np.array([7, 7, 3, 4, 4, -2, -2, -2, 7])
    # cluster 0 keeps 7 (2 of 3), cluster 1 keeps 4, cluster 2 had no id: a fresh one above all.
    assert stable_ids(labels, previous) == [7, 4, 8]
    # Two new clusters claiming the same old id: the larger majority wins it.
    assert stable_ids(np.array([0, 0, 1, 1, 1]), np.array([5, 5, 5, 5, 5])) == [6, 5]
    assert stable_ids(np.array([-1, -1]), np.array([-2, -2])) == []
