"""Clustering of one user's memories: PCA, HDBSCAN, Faiss assignment.

Measured on this project's 2-core machine (one thread): HDBSCAN on raw 384-d
vectors is ~20x slower than on a 32-d PCA projection with the same clusters, and
scikit-learn's ``HDBSCAN`` beat the ``hdbscan`` package on PCA-32 data (20k points:
6.6 s vs 9.4 s, identical labels), so scikit-learn's is used. HDBSCAN itself is
super-linear, so it is fitted on at most ``max_fit_points`` memories (a seeded
sample; 10k -> ~3.5 s) and every other memory joins its nearest centroid through a
Faiss inner-product index, or stays noise when it is farther from that centroid
than any of the cluster's fitted members (100k memories: ~6 s in all).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.decomposition import PCA

from dmha.config import ClusteringConfig
from dmha.memory.embedding import Embedder
from dmha.memory.records import CLUSTER_NOISE, MemoryRecord, index_text, memory_id
from dmha.memory.summariser import Summariser
from dmha.turn import Turn, as_role

if TYPE_CHECKING:
    from dmha.memory.hot_index import UserIndex

__all__ = ["Clusterer", "Clustering", "build_cluster_summaries", "stable_ids"]

_CLUSTER_QUOTES = 8  # central members a cluster summary is written from
_CLUSTER_SOURCES = 64  # turn ids a cluster summary links (the ARRAY field caps at 256)


@dataclass(frozen=True)
class Clustering:
    """The result of one run over ``n`` vectors."""

    labels: np.ndarray
    """``(n,)`` cluster id per vector, ``CLUSTER_NOISE`` (-1) for noise."""
    centroids: np.ndarray
    """``(C, dim)`` unit mean vector of each cluster, row i for cluster id i."""
    seconds: float

    @property
    def clusters(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    def central_members(self, vectors: np.ndarray, cluster: int, n: int) -> list[int]:
        """Indices of the ``n`` members closest to the cluster's centroid.

        Args:
            vectors: the vectors the clustering ran on.
            cluster: a cluster id.
            n: how many.

        Returns:
            Member indices, most central first.
        """
        members = np.flatnonzero(self.labels == cluster)
        if len(members) == 0:
            return []
        sims = vectors[members] @ self.centroids[cluster]
        order = np.argsort(-sims, kind="stable")[:n]
        return [int(members[i]) for i in order]


class Clusterer:
    """Finds clusters in unit vectors.

    Args:
        cfg: the ``memory.clustering`` config section.
        seed: seed of the fitting sample and PCA (runs are reproducible).
    """

    def __init__(self, cfg: ClusteringConfig, seed: int = 0) -> None:
        self._cfg = cfg
        self._seed = seed

    def fit(self, vectors: np.ndarray) -> Clustering:
        """Cluster vectors.

        Args:
            vectors: ``(n, dim)`` float32 unit vectors.

        Returns:
            Labels and centroids; all noise when there are too few vectors.
        """
        start = time.perf_counter()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(x)
        dim = x.shape[1] if x.ndim == 2 else 0
        labels = np.full(n, CLUSTER_NOISE, dtype=np.int64)
        min_size = self._cfg.min_cluster_size
        if n < 2 * min_size:
            return Clustering(labels, np.zeros((0, dim), dtype=np.float32), time.perf_counter() - start)
        rng = np.random.default_rng(self._seed)
        fit_idx = np.sort(rng.choice(n, size=min(n, self._cfg.max_fit_points), replace=False))
        sample = x[fit_idx]
        dims = min(self._cfg.pca_dims, len(sample) - 1, dim)
        reduced = PCA(n_components=dims, random_state=self._seed).fit_transform(sample)
        fitted = HDBSCAN(min_cluster_size=min_size, copy=True).fit(reduced).labels_
        count = int(fitted.max()) + 1 if len(fitted) else 0
        if count == 0:
            return Clustering(labels, np.zeros((0, dim), dtype=np.float32), time.perf_counter() - start)
        centroids = np.zeros((count, dim), dtype=np.float32)
        radius = np.zeros(count, dtype=np.float32)
        for c in range(count):
            members = sample[fitted == c]
            mean = members.mean(axis=0)
            centroids[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            # A non-fitted point joins only if it is as close as the farthest fitted
            # member, so points far from every cluster stay noise.
            radius[c] = float(np.min(members @ centroids[c]))
        labels[fit_idx] = fitted
        rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
        if len(rest):
            index = faiss.IndexFlatIP(dim)
            index.add(centroids)
            sims, nearest = index.search(x[rest], 1)
            near = nearest[:, 0]
            ok = sims[:, 0] >= radius[near]
            labels[rest[ok]] = near[ok]
        return Clustering(labels, centroids, time.perf_counter() - start)


def stable_ids(labels: np.ndarray, previous: np.ndarray) -> list[int]:
    """Cluster ids that survive reclustering: a new cluster keeps the id most of its
    members had, so unchanged memberships need no write-back and ids mean the same
    thing from one run to the next.

    Args:
        labels: this run's labels (0..C-1, -1 noise).
        previous: each memory's stored cluster id (negative: noise or never clustered).

    Returns:
        The id to store for each of this run's clusters (index = label).
    """
    count = int(labels.max()) + 1 if len(labels) else 0
    claims: list[tuple[int, int, int]] = []  # (-votes, new label, old id)
    for c in range(count):
        old = previous[(labels == c) & (previous >= 0)]
        if len(old):
            values, votes = np.unique(old, return_counts=True)
            best = int(np.argmax(votes))
            if votes[best] * 2 > int(np.sum(labels == c)):  # a majority of the members
                claims.append((-int(votes[best]), c, int(values[best])))
    out = [-1] * count
    taken: set[int] = set()
    for _, c, old_id in sorted(claims):  # the largest majority wins a contested id
        if old_id not in taken:
            out[c] = old_id
            taken.add(old_id)
    fresh = max([int(previous.max()) if len(previous) else -1, *taken, -1]) + 1
    for c in range(count):
        if out[c] < 0:
            out[c] = fresh
            fresh += 1
    return out


def build_cluster_summaries(
    index: UserIndex,
    ids: Sequence[str],
    vectors: np.ndarray,
    result: Clustering,
    summariser: Summariser,
    embedder: Embedder,
    cluster_ids: Sequence[int] | None = None,
) -> list[MemoryRecord]:
    """One ``cluster_summary`` memory per cluster, written from its most central members.

    Args:
        index: the user's index (for the members' texts).
        ids: memory id of each clustered vector.
        vectors: the clustered vectors.
        result: the clustering.
        summariser: writes each summary from the members (as pseudo-turns, oldest first).
        embedder: embeds the summaries.
        cluster_ids: the stored id of each cluster (default: its label).

    Returns:
        Embedded records; each links the turn ids its members derive from and carries
        its cluster id. The id derives from the members, so an unchanged cluster keeps it.
    """
    records: list[MemoryRecord] = []
    kept: list[MemoryRecord] = []
    for cluster in range(result.clusters):
        central = result.central_members(vectors, cluster, _CLUSTER_QUOTES)
        members = [m for m in (index.get(ids[i]) for i in central) if m is not None]
        if not members:
            continue
        stored_id = cluster if cluster_ids is None else cluster_ids[cluster]
        mid = memory_id(index.user_id, "cluster_summary", sorted(m.id for m in members))
        existing = index.get(mid)
        if existing is not None:
            # Same central members, same text: reuse it (and its vector) instead of
            # summarising and embedding again on every run.
            vec = index.vectors_of([mid])
            if len(vec):
                kept.append(dataclasses.replace(existing, cluster_id=stored_id, vector=vec[0]))
                continue
        members.sort(key=lambda m: (m.created_at, m.id))
        pseudo = [
            Turn(
                turn_id=m.id,
                user_id=index.user_id,
                session_id=m.session_id,
                role=as_role(m.role),
                text=m.text,
                created_at=m.created_at,
            )
            for m in members
        ]
        text = summariser(pseudo).strip()
        if not text:
            continue
        sources = list(dict.fromkeys(s for m in members for s in m.source_ids))[:_CLUSTER_SOURCES]
        records.append(
            MemoryRecord(
                id=mid,
                user_id=index.user_id,
                session_id="",
                kind="cluster_summary",
                text=text,
                created_at=max(m.created_at for m in members),
                source_ids=tuple(sources),
                cluster_id=stored_id,
                role="",
                importance=0.7,
            )
        )
    if records:
        vecs = embedder.embed([index_text(r) for r in records])
        records = [dataclasses.replace(r, vector=v) for r, v in zip(records, vecs, strict=True)]
    return kept + records
