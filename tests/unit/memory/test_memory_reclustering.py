"""Reclustering writes back only what is worth storing; the hot index knows the rest."""

from __future__ import annotations

import numpy as np
from memory_fakes import HashEmbedder, MemoryStore

from dmha.config import ClusteringConfig, MemoryConfig, RetrievalConfig
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.records import CLUSTER_NOISE, CLUSTER_PENDING, MemoryRecord


def blobs_and_noise(user: str = "alice") -> list[MemoryRecord]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 64)).astype(np.float32)
    out = []
    for i in range(150):
        if i < 120:
            v = centres[i % 3] / np.linalg.norm(centres[i % 3]) + 0.03 * rng.standard_normal(64)
        else:  # scattered: HDBSCAN leaves these as noise
            v = rng.standard_normal(64)
        out.append(
            MemoryRecord(
                f"m{i}",
                user,
                "s",
                "turn",
                f"note {i}",
                1.7e9 + i,
                (f"t{i}",),
                vector=(v / np.linalg.norm(v)).astype(np.float32),
            )
        )
    return out


def build(hot_users: int) -> tuple[LongTermMemory, MemoryStore]:
    cfg = MemoryConfig(
        clustering=ClusteringConfig(min_cluster_size=5, pca_dims=8), retrieval=RetrievalConfig(hot_users=hot_users)
    )
    store = MemoryStore(64)
    return LongTermMemory(cfg, store, HashEmbedder(64)), store


def test_first_seen_noise_is_not_written_but_is_noise_in_the_hot_index():
    ltm, store = build(hot_users=4)
    ltm.put_records(blobs_and_noise())
    report = ltm.recluster("alice")
    assert report.clusters >= 3 and report.noise > 0
    index = ltm._hot.peek("alice")
    noise = [r.id for r in index.records() if r.kind == "turn" and r.cluster_id == CLUSTER_NOISE]
    assert len(noise) == report.noise and index.pending() == 0
    assert all(store.rows[m].cluster_id == CLUSTER_PENDING for m in noise)  # not written
    clustered = [r.id for r in index.records() if r.kind == "turn" and r.cluster_id >= 0]
    assert all(store.rows[m].cluster_id == index.get(m).cluster_id for m in clustered)
    # A rerun finds the same clusters and writes no cluster id again.
    writes = store.upserts
    again = ltm.recluster("alice")
    assert again.clusters == report.clusters and store.upserts == writes + 1  # only the (reused) summaries


def test_without_a_hot_index_noise_is_written():
    ltm, store = build(hot_users=0)
    ltm.put_records(blobs_and_noise())
    report = ltm.recluster("alice")
    stored = [r for r in store.rows.values() if r.kind == "turn"]
    assert sum(r.cluster_id == CLUSTER_NOISE for r in stored) == report.noise > 0
    assert not any(r.cluster_id == CLUSTER_PENDING for r in stored)
