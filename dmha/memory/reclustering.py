"""One reclustering run of a user's memories, from snapshot to written-back result.

The heavy part (HDBSCAN over the user's vectors, the cluster summaries) works on a
snapshot without holding the user's lock, so the user can keep chatting; only the
write-back (changed memberships, summaries, stale summaries) runs under the lock,
into Milvus first and then into the hot index.
"""

from __future__ import annotations

import time

import numpy as np

from dmha.memory.clustering import Clusterer, build_cluster_summaries, stable_ids
from dmha.memory.embedding import Embedder
from dmha.memory.hot_index import HotIndex, UserIndex
from dmha.memory.records import CLUSTER_NOISE, CLUSTER_PENDING, ClusterReport
from dmha.memory.store import LongTermStore
from dmha.memory.summariser import Summariser

__all__ = ["Reclusterer"]


class Reclusterer:
    """Clusters one user's memories and writes the result to the store and hot index.

    Args:
        store: the Milvus store (source of truth).
        hot: the hot indexes (and the per-user locks every writer takes).
        clusterer: fits the clusters.
        summariser: writes each cluster's summary.
        embedder: embeds the cluster summaries.
    """

    def __init__(
        self,
        store: LongTermStore,
        hot: HotIndex,
        clusterer: Clusterer,
        summariser: Summariser,
        embedder: Embedder,
    ) -> None:
        self._store = store
        self._hot = hot
        self._clusterer = clusterer
        self._summariser = summariser
        self._embedder = embedder

    def run(self, user_id: str) -> ClusterReport:
        """Cluster the user's memories, write cluster ids back, rebuild cluster summaries.

        Memories added while the run works stay pending for the next run.

        Args:
            user_id: the user (already validated by the caller).

        Returns:
            Counts and timing.

        Raises:
            MilvusUnavailable: Milvus failed (cluster ids may be partly written; a
                rerun fixes them).
        """
        start = time.perf_counter()
        index = self._hot.get(user_id)
        hot = index is not None
        if index is None:  # no hot cache: work on a throwaway index
            index = UserIndex(user_id, self._store.dim)
            index.add(self._store.scan(user_id, with_vectors=True))
        ids, vectors = index.snapshot(exclude_kinds=("cluster_summary",))
        result = self._clusterer.fit(vectors)
        before = np.array(
            [rec.cluster_id if (rec := index.get(mid)) is not None else CLUSTER_PENDING for mid in ids],
            dtype=np.int64,
        )
        cluster_ids = stable_ids(result.labels, before)
        after = np.array([cluster_ids[c] if c >= 0 else c for c in result.labels.tolist()], dtype=np.int64)
        summaries = build_cluster_summaries(index, ids, vectors, result, self._summariser, self._embedder, cluster_ids)
        with self._hot.writing(user_id) as loaded:
            # Only changed memberships are written back, and never for a memory
            # deleted meanwhile (a partial update must not resurrect it).
            assignments = {
                mid: int(new)
                for mid, old, new in zip(ids, before.tolist(), after.tolist(), strict=True)
                if new != old and index.get(mid) is not None
            }
            self._store.set_clusters(user_id, _worth_storing(assignments, before, ids) if hot else assignments)
            self._store.upsert(summaries)
            keep = {s.id for s in summaries}
            stale = [r.id for r in index.records() if r.kind == "cluster_summary" and r.id not in keep]
            self._store.delete(user_id, stale)
            # The index loaded now may be another one than the run started from (an
            # eviction and reload meanwhile): it gets the same changes, or it would
            # claim a version without them.
            for target in {id(i): i for i in (index, loaded) if i is not None}.values():
                target.set_clusters(assignments, result.centroids, cluster_ids)
                target.add(summaries)
                target.remove(stale)
        return ClusterReport(
            memories=len(ids),
            clusters=result.clusters,
            noise=int(np.sum(result.labels < 0)),
            seconds=time.perf_counter() - start,
            summaries=len(summaries),
        )


def _worth_storing(assignments: dict[str, int], before: np.ndarray, ids: list[str]) -> dict[str, int]:
    """The changed memberships to write to the store: all but first-seen noise.

    Writing a cluster id costs Milvus Lite a read and a rewrite of the whole row
    (0.2-0.35 ms each, whatever the batch size), and a user's first run changes
    every memory: writing 100k ids was most of a first 100k run (BENCHMARKS.md). A memory seen
    for the first time and left as noise gains nothing from a stored id: it stays
    ``CLUSTER_PENDING`` in the store while the hot index (and its persisted copy)
    marks it noise. After a rebuild from the store alone such memories count as
    pending again, so one more run may be due; it writes nothing for them either.
    Noise of a memory that was in a cluster is written (the stored id is wrong).
    """
    pending = {mid for mid, old in zip(ids, before.tolist(), strict=True) if old == CLUSTER_PENDING}
    return {mid: cid for mid, cid in assignments.items() if not (cid == CLUSTER_NOISE and mid in pending)}
