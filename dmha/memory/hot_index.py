"""In-process indexes of active users' memories, in front of Milvus.

A :class:`UserIndex` holds one user's memories (records without vectors, a vector
matrix with a Faiss index over it, a BM25 index, the summary<->turn links, the
per-session turn order and the cluster centroids). :class:`HotIndex` keeps the
``hot_users`` most recently used ones (LRU) and rebuilds a user's index from
Milvus on first use. Milvus stays the source of truth: callers write to Milvus
first and then mirror the change here.

Faiss: exact ``IndexFlatIP`` until ``ivf_threshold`` memories (measured here, one
core: ~10 ms per query at 100k x 384, memory-bound), then ``IndexIVFFlat`` with
sqrt(n) lists of which 16 are probed (~1 ms at 100k; trained in a few seconds on
50 points per list, once when the threshold is crossed and at each compaction).
Rows are append-only with tombstones so Faiss labels stay equal to row numbers;
the index is compacted when a quarter of its rows are dead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from dmha.memory.bm25 import BM25Index, tokenize
from dmha.memory.records import CLUSTER_PENDING, MemoryRecord, index_text

__all__ = ["HotIndex", "UserIndex"]

log = logging.getLogger(__name__)

_NPROBE = 16
_TRAIN_PER_LIST = 50  # Faiss wants >= 39 training points per list


def _is_pending(rec: MemoryRecord) -> int:
    return int(rec.cluster_id == CLUSTER_PENDING and rec.kind != "cluster_summary")


class UserIndex:
    """Everything needed to search one user's memories without a round-trip.

    Not for sharing across users. Thread-safe: every method takes the index's lock.

    Args:
        user_id: the owner.
        dim: vector dimension.
        ivf_threshold: memory count above which the Faiss index becomes IVF.
    """

    def __init__(self, user_id: str, dim: int, ivf_threshold: int = 50_000) -> None:
        self.user_id = user_id
        self.dim = dim
        self._ivf_threshold = ivf_threshold
        self.lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._records: list[MemoryRecord | None] = []
        self._row: dict[str, int] = {}
        self._vectors = np.zeros((64, self.dim), dtype=np.float32)
        self._faiss: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._bm25 = BM25Index()
        self._dead = 0
        self._pending = 0  # memories never clustered (kept here: archival asks after every batch)
        # turn id -> ids of the memories listing it in source_ids (the turn itself,
        # its summary, cluster summaries): the links dedupe and context use.
        self._by_source: dict[str, set[str]] = defaultdict(set)
        self._sessions: dict[str, list[int]] = defaultdict(list)
        # Chronological links between a session's turns (row -> row, -1 at the ends),
        # recomputed lazily for the sessions a write touched.
        self._pred = np.full(64, -1, dtype=np.int64)
        self._succ = np.full(64, -1, dtype=np.int64)
        self._context_len = np.zeros(64, dtype=np.float32)
        self._unordered: set[str] = set()
        self._centroids = np.zeros((0, self.dim), dtype=np.float32)
        self._centroid_ids: list[int] = []

    # -- building -----------------------------------------------------------------

    def __len__(self) -> int:
        with self.lock:
            return len(self._row)

    def _append_rows(self, records: Sequence[MemoryRecord]) -> None:
        start = len(self._records)
        need = start + len(records)
        if need > len(self._vectors):
            grown = np.zeros((max(need, 2 * len(self._vectors)), self.dim), dtype=np.float32)
            grown[:start] = self._vectors[:start]
            self._vectors = grown
        if len(self._vectors) > len(self._pred):
            size = len(self._vectors)
            self._pred = np.concatenate([self._pred, np.full(size - len(self._pred), -1, dtype=np.int64)])
            self._succ = np.concatenate([self._succ, np.full(size - len(self._succ), -1, dtype=np.int64)])
            self._context_len = np.concatenate(
                [self._context_len, np.zeros(size - len(self._context_len), dtype=np.float32)]
            )
        for offset, rec in enumerate(records):
            row = start + offset
            self._vectors[row] = np.asarray(rec.vector, dtype=np.float32)
            self._records.append(dataclasses.replace(rec, vector=None))
            self._row[rec.id] = row
            tokens = tokenize(index_text(rec))
            self._bm25.add(row, tokens)
            self._context_len[row] = len(tokens)
            for src in rec.source_ids:
                self._by_source[src].add(rec.id)
            if rec.kind == "turn":
                self._sessions[rec.session_id].append(row)
                self._unordered.add(rec.session_id)
            self._pending += _is_pending(rec)
        if isinstance(self._faiss, faiss.IndexFlatIP) and need > self._ivf_threshold:
            self._rebuild_faiss()
        else:
            self._faiss.add(self._vectors[start:need])

    def _rebuild_faiss(self) -> None:
        n = len(self._records)
        data = self._vectors[:n]
        index: faiss.Index
        if n > self._ivf_threshold:
            nlist = int(np.sqrt(n))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = data[rng.choice(n, size=min(n, _TRAIN_PER_LIST * nlist), replace=False)]
            index.train(sample)
            index.nprobe = _NPROBE
        else:
            index = faiss.IndexFlatIP(self.dim)
        index.add(data)
        self._faiss = index

    def add(self, records: Iterable[MemoryRecord]) -> None:
        """Add or replace memories (records must carry vectors).

        Args:
            records: memories of this user.
        """
        fresh: list[MemoryRecord] = []
        with self.lock:
            for rec in records:
                if rec.user_id != self.user_id:
                    raise ValueError("a UserIndex only holds its own user's memories")
                if rec.vector is None:
                    raise ValueError(f"memory {rec.id} has no vector")
                self._remove_one(rec.id)
                fresh.append(rec)
            if fresh:
                self._append_rows(fresh)
            self._maybe_compact()

    def _remove_one(self, memory_id: str) -> bool:
        row = self._row.pop(memory_id, None)
        if row is None:
            return False
        rec = self._records[row]
        assert rec is not None
        self._records[row] = None
        self._pending -= _is_pending(rec)
        self._bm25.remove(row)
        for src in rec.source_ids:
            owners = self._by_source.get(src)
            if owners is not None:
                owners.discard(memory_id)
                if not owners:
                    del self._by_source[src]
        if rec.kind == "turn":
            rows = self._sessions.get(rec.session_id)
            if rows is not None:
                rows.remove(row)
                self._unordered.add(rec.session_id)
                if not rows:
                    del self._sessions[rec.session_id]
            self._pred[row] = self._succ[row] = -1
        self._dead += 1
        return True

    def remove(self, ids: Iterable[str]) -> int:
        """Forget memories.

        Returns:
            How many were present.
        """
        with self.lock:
            count = sum(self._remove_one(i) for i in ids)
            self._maybe_compact()
            return count

    def _maybe_compact(self) -> None:
        if self._dead < 64 or self._dead * 4 < len(self._records):
            return
        live = [r for r in self._records if r is not None]
        vectors = np.stack([self._vectors[self._row[r.id]] for r in live]) if live else None
        centroids, centroid_ids = self._centroids, self._centroid_ids
        self._reset()
        if live:
            assert vectors is not None
            self._append_rows([dataclasses.replace(r, vector=v) for r, v in zip(live, vectors, strict=True)])
        self._centroids, self._centroid_ids = centroids, centroid_ids

    def set_clusters(self, assignments: dict[str, int], centroids: np.ndarray, centroid_ids: Sequence[int]) -> None:
        """Record a clustering run's result.

        Args:
            assignments: memory id -> cluster id (ids no longer present are skipped).
            centroids: ``(C, dim)`` unit vectors.
            centroid_ids: the cluster id of each centroid row.
        """
        with self.lock:
            for mid, cid in assignments.items():
                row = self._row.get(mid)
                if row is not None:
                    rec = self._records[row]
                    assert rec is not None
                    new = dataclasses.replace(rec, cluster_id=int(cid))
                    self._pending += _is_pending(new) - _is_pending(rec)
                    self._records[row] = new
            self._centroids = np.ascontiguousarray(centroids, dtype=np.float32).reshape(-1, self.dim)
            self._centroid_ids = list(centroid_ids)

    # -- reading --------------------------------------------------------------------

    def get(self, memory_id: str) -> MemoryRecord | None:
        """The record (without vector), or None."""
        with self.lock:
            row = self._row.get(memory_id)
            return None if row is None else self._records[row]

    def record_at(self, row: int) -> MemoryRecord | None:
        """The record stored at a row (None when deleted)."""
        with self.lock:
            return self._records[row] if 0 <= row < len(self._records) else None

    def row_of(self, memory_id: str) -> int | None:
        """The row of a memory, or None."""
        with self.lock:
            return self._row.get(memory_id)

    def records(self) -> Iterator[MemoryRecord]:
        """A snapshot of the live records (without vectors)."""
        with self.lock:
            live = [r for r in self._records if r is not None]
        return iter(live)

    def snapshot(self, exclude_kinds: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
        """Ids and a copy of their vectors (for clustering outside the lock)."""
        with self.lock:
            rows = [self._row[r.id] for r in self._records if r is not None and r.kind not in exclude_kinds]
            ids = [self._records[row].id for row in rows]  # type: ignore[union-attr]
            return ids, self._vectors[rows].copy()

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        """Copies of the vectors of present memories (absent ids are skipped)."""
        with self.lock:
            rows = [self._row[i] for i in ids if i in self._row]
            return self._vectors[rows].copy()

    def dense(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The ``n`` rows most similar to a unit query vector, best first."""
        with self.lock:
            live = len(self._row)
            if live == 0 or n <= 0:
                return []
            want = min(n + self._dead, len(self._records))
            q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
            sims, rows = self._faiss.search(q, want)
            out = [
                (int(r), float(s))
                for r, s in zip(rows[0], sims[0], strict=True)
                if r >= 0 and self._records[r] is not None
            ]
            return out[:n]

    def similarity(self, query: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Inner products of a query with the given rows' vectors."""
        with self.lock:
            if not rows:
                return np.zeros(0, dtype=np.float32)
            return self._vectors[list(rows)] @ np.asarray(query, dtype=np.float32)

    def lexical(self, query_tokens: Sequence[str], n: int) -> list[tuple[int, float]]:
        """The ``n`` best BM25 rows for the tokens, best first."""
        with self.lock:
            return self._bm25.top(query_tokens, n)

    def nearest_clusters(self, query: np.ndarray, n: int) -> list[int]:
        """Cluster ids of the ``n`` centroids nearest a unit query vector."""
        with self.lock:
            if len(self._centroid_ids) == 0 or n <= 0:
                return []
            sims = self._centroids @ np.asarray(query, dtype=np.float32)
            order = np.argsort(-sims)[:n]
            return [self._centroid_ids[i] for i in order]

    def owners(self, turn_id: str) -> set[str]:
        """Ids of the memories built from a turn (the turn itself, its summaries)."""
        with self.lock:
            return set(self._by_source.get(turn_id, ()))

    def _order(self) -> None:
        """Recompute the chronological links of the sessions written since the last call."""
        for session in self._unordered:
            rows = self._sessions.get(session)
            if not rows:
                continue
            rows.sort(key=lambda r: (self._records[r].created_at, r))  # type: ignore[union-attr]
            order = np.asarray(rows, dtype=np.int64)
            self._pred[order] = np.concatenate([[-1], order[:-1]])
            self._succ[order] = np.concatenate([order[1:], [-1]])
            own = np.asarray([self._bm25.length(int(r)) for r in order], dtype=np.float32)
            self._context_len[order] = own + np.concatenate([[0.0], own[:-1]])
        self._unordered.clear()

    def neighbours(self, row: int, distance: int = 1) -> list[int]:
        """The turns ``distance`` places before and after a turn in its session.

        Args:
            row: a turn's row.
            distance: how far (1 = the turns said just before and after).

        Returns:
            Up to two rows, the earlier first; none for a non-turn memory.
        """
        with self.lock:
            rec = self._records[row] if 0 <= row < len(self._records) else None
            if rec is None or rec.kind != "turn":
                return []
            self._order()
            out = []
            for links in (self._pred, self._succ):
                at = row
                for _ in range(distance):
                    at = int(links[at])
                    if at < 0:
                        break
                if at >= 0:
                    out.append(at)
            return out

    def around(self, rows: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray]:
        """The turns ``distance`` places before and after each of some rows.

        Args:
            rows: row numbers.
            distance: how far (>= 1).

        Returns:
            ``(before, after)``, aligned with ``rows``; -1 where there is none
            (a session's end, or a memory that is not a turn).
        """
        with self.lock:
            self._order()
            before = np.asarray(rows, dtype=np.int64)
            after = before.copy()
            for _ in range(distance):
                before = np.where(before >= 0, self._pred[np.maximum(before, 0)], -1)
                after = np.where(after >= 0, self._succ[np.maximum(after, 0)], -1)
            return before, after

    def lexical_in_context(self, query_tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 of every matching row, each turn read with the turn said before it.

        A reply ("It's a mix of drama and romance!") rarely repeats the words of the
        question it answers; read with that question it matches them.

        Args:
            query_tokens: tokens from :func:`tokenize`.

        Returns:
            ``(rows, scores)``, unordered.
        """
        with self.lock:
            self._order()
            return self._bm25.context_scores(query_tokens, self._succ, self._context_len)

    def lexical_scores(self, query_tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Plain BM25 of every matching row: ``(rows, scores)``, unordered."""
        with self.lock:
            return self._bm25.scores(query_tokens)

    def counts(self) -> dict[str, int]:
        """Live memories per kind, plus ``"_pending"`` (never clustered)."""
        with self.lock:
            out: dict[str, int] = defaultdict(int)
            for r in self._records:
                if r is not None:
                    out[r.kind] += 1
                    if r.cluster_id == CLUSTER_PENDING and r.kind != "cluster_summary":
                        out["_pending"] += 1
            return dict(out)

    def pending(self) -> int:
        """Memories no clustering run has seen yet."""
        with self.lock:
            return self._pending

    def cluster_count(self) -> int:
        """How many clusters the last run found."""
        with self.lock:
            return len(self._centroid_ids)


class HotIndex:
    """An LRU of :class:`UserIndex` objects, loaded from the store on first use.

    Args:
        loader: yields a user's records *with vectors* (the store's ``scan``).
        dim: vector dimension.
        capacity: users kept (``hot_users``); 0 disables the cache.
        ivf_threshold: passed to each :class:`UserIndex`.
    """

    def __init__(
        self,
        loader: Callable[[str], Iterable[MemoryRecord]],
        dim: int,
        capacity: int,
        ivf_threshold: int = 50_000,
    ) -> None:
        self._loader = loader
        self._dim = dim
        self._capacity = capacity
        self._ivf_threshold = ivf_threshold
        self._users: OrderedDict[str, UserIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._user_locks: dict[str, threading.RLock] = {}

    @property
    def enabled(self) -> bool:
        """False when ``hot_users`` is 0."""
        return self._capacity > 0

    def user_lock(self, user_id: str) -> threading.RLock:
        """The lock that orders a user's store writes with their index (re)loads.

        Hold it around "write to Milvus, then mirror here" so a concurrent load
        cannot miss the write.
        """
        with self._lock:
            lock = self._user_locks.get(user_id)
            if lock is None:
                lock = self._user_locks[user_id] = threading.RLock()
            return lock

    def peek(self, user_id: str) -> UserIndex | None:
        """The user's index if loaded (does not load or touch the LRU order)."""
        with self._lock:
            return self._users.get(user_id)

    def get(self, user_id: str) -> UserIndex | None:
        """The user's index, loading it from the store when absent.

        Returns:
            None when the cache is disabled.

        Raises:
            MilvusUnavailable: loading failed (nothing is cached).
        """
        if not self.enabled:
            return None
        with self._lock:
            index = self._users.get(user_id)
            if index is not None:
                self._users.move_to_end(user_id)
                return index
        with self.user_lock(user_id):
            with self._lock:
                index = self._users.get(user_id)  # another thread may have loaded it
                if index is not None:
                    return index
            index = UserIndex(user_id, self._dim, self._ivf_threshold)
            batch: list[MemoryRecord] = []
            for rec in self._loader(user_id):
                batch.append(rec)
                if len(batch) >= 4096:
                    index.add(batch)
                    batch = []
            index.add(batch)
            with self._lock:
                self._users[user_id] = index
                while len(self._users) > self._capacity:
                    evicted, _ = self._users.popitem(last=False)
                    log.debug("hot index evicted user %s", evicted)
            return index

    def drop(self, user_id: str) -> None:
        """Forget a user's index (it is reloaded on next use)."""
        with self._lock:
            self._users.pop(user_id, None)

    def loaded_users(self) -> list[str]:
        """Users with a loaded index, least recently used first."""
        with self._lock:
            return list(self._users)
