"""One user's memories, indexed in process: :class:`UserIndex`.

A :class:`UserIndex` holds one user's memories (records without vectors, a vector
matrix with a Faiss index over it, a BM25 index, the summary<->turn links, the
per-session turn order and the cluster centroids). :class:`~dmha.memory.hot_index.HotIndex`
keeps the most recently used ones. Milvus stays the source of truth: callers write
to Milvus first and then mirror the change here. :meth:`UserIndex.export` and
:meth:`UserIndex.restore` turn an index into plain arrays and back (what
:mod:`dmha.memory.hot_index_store` persists).

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
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import faiss
import numpy as np

from dmha.memory.bm25 import BM25Index, tokenize
from dmha.memory.packing import pack_strings, unpack_strings
from dmha.memory.records import CLUSTER_PENDING, KINDS, MemoryRecord, index_text
from dmha.memory.versions import StoreVersion

__all__ = ["UserIndex"]

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
        self.version: StoreVersion | None = None
        """The store version this index provably holds every write of (None: unknown,
        e.g. a write of another process interleaved); only such an index is persisted."""
        self.saved: str | None = None
        """Digest of the version last persisted (or loaded from disk) for this user."""
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
            pairs = [
                (row, r.id) for row, r in enumerate(self._records) if r is not None and r.kind not in exclude_kinds
            ]
            rows = np.fromiter((row for row, _ in pairs), dtype=np.int64, count=len(pairs))
            # Fancy indexing already copies (a second .copy() cost ~1 s at 100k).
            return [mid for _, mid in pairs], self._vectors[rows]

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

    # -- persistence ----------------------------------------------------------------

    def export(self) -> tuple[dict[str, int | str], dict[str, np.ndarray]]:
        """The whole index as plain arrays (no pickles), for :meth:`restore`.

        Returns:
            ``(meta, arrays)``: small JSON-able facts and the named arrays.
        """
        with self.lock:
            self._order()  # persist settled neighbour links
            n = len(self._records)
            alive = np.array([r is not None for r in self._records], dtype=bool)
            recs = [r if r is not None else _DEAD for r in self._records]
            vectors = self._vectors[:n].copy()
            vectors[~alive] = 0.0  # a deleted memory's vector must not survive on disk
            arrays: dict[str, np.ndarray] = {"alive": alive, "vectors": vectors}
            for name in ("id", "session_id", "text", "role"):
                arrays[name], arrays[f"{name}_ends"] = pack_strings([getattr(r, name) for r in recs])
            arrays["kind"] = np.array([KINDS.index(r.kind) for r in recs], dtype=np.uint8)
            arrays["created_at"] = np.array([r.created_at for r in recs], dtype=np.float64)
            arrays["cluster_id"] = np.array([r.cluster_id for r in recs], dtype=np.int64)
            arrays["importance"] = np.array([r.importance for r in recs], dtype=np.float64)
            arrays["source_counts"] = np.array([len(r.source_ids) for r in recs], dtype=np.int64)
            arrays["sources"], arrays["sources_ends"] = pack_strings([s for r in recs for s in r.source_ids])
            arrays["pred"], arrays["succ"] = self._pred[:n].copy(), self._succ[:n].copy()
            arrays["context_len"] = self._context_len[:n].copy()
            arrays["centroids"] = self._centroids.copy()
            arrays["centroid_ids"] = np.array(self._centroid_ids, dtype=np.int64)
            for key, value in self._bm25.export().items():
                arrays[f"bm25_{key}"] = value
            ivf = not isinstance(self._faiss, faiss.IndexFlatIP)
            if ivf:
                # The trained quantizer and each row's inverted list: restore adds the
                # vectors back to their lists without searching the quantizer again
                # (~40 ms at 100k instead of ~3 s), and the vectors are stored once.
                empty = faiss.clone_index(self._faiss)
                empty.reset()
                arrays["faiss_ivf"] = faiss.serialize_index(empty)
                arrays["faiss_lists"] = _list_of_rows(self._faiss, n)
            meta: dict[str, int | str] = {
                "user_id": self.user_id,
                "dim": self.dim,
                "rows": n,
                "dead": self._dead,
                "pending": self._pending,
                "ivf_threshold": self._ivf_threshold,
            }
            return meta, arrays

    @classmethod
    def restore(cls, meta: dict[str, int | str], arrays: dict[str, np.ndarray]) -> UserIndex:
        """An index from :meth:`export`'s output.

        Raises:
            ValueError: the arrays are inconsistent (a damaged or foreign copy).
            KeyError: an array is missing.
        """
        dim, n = int(meta["dim"]), int(meta["rows"])
        index = cls(str(meta["user_id"]), dim, int(meta["ivf_threshold"]))
        vectors = arrays["vectors"]
        if vectors.shape != (n, dim) or len(arrays["alive"]) != n:
            raise ValueError("persisted hot index: vector matrix does not match its rows")
        columns = {
            name: unpack_strings(arrays[name], arrays[f"{name}_ends"]) for name in ("id", "session_id", "text", "role")
        }
        sources = unpack_strings(arrays["sources"], arrays["sources_ends"])
        counts = arrays["source_counts"].tolist()
        if any(len(col) != n for col in columns.values()) or sum(counts) != len(sources) or len(counts) != n:
            raise ValueError("persisted hot index: record columns do not match its rows")
        kinds = [KINDS[k] for k in arrays["kind"].tolist()]
        created, cluster = arrays["created_at"].tolist(), arrays["cluster_id"].tolist()
        importance, alive = arrays["importance"].tolist(), arrays["alive"].tolist()
        # Column-wise passes: a row-by-row loop with indexing costs ~2x more at 100k.
        ends = np.cumsum(counts).tolist()
        starts = [0, *ends[:-1]] if ends else []
        user = index.user_id
        records: list[MemoryRecord | None] = [
            MemoryRecord(
                id=mid,
                user_id=user,
                session_id=sid,
                kind=kind,
                text=text,
                created_at=ts,
                source_ids=tuple(sources[a:z]),
                cluster_id=cid,
                role=role,
                importance=imp,
            )
            if live
            else None
            for mid, sid, kind, text, ts, cid, role, imp, live, a, z in zip(
                columns["id"],
                columns["session_id"],
                kinds,
                columns["text"],
                created,
                cluster,
                columns["role"],
                importance,
                alive,
                starts,
                ends,
                strict=True,
            )
        ]
        index._row = {rec.id: row for row, rec in enumerate(records) if rec is not None}
        for row, rec in enumerate(records):
            if rec is not None:
                for src in rec.source_ids:
                    index._by_source[src].add(rec.id)
                if rec.kind == "turn":
                    index._sessions[rec.session_id].append(row)
        index._records = records
        index._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index._pred, index._succ = arrays["pred"].astype(np.int64), arrays["succ"].astype(np.int64)
        index._context_len = arrays["context_len"].astype(np.float32)
        index._dead, index._pending = int(meta["dead"]), int(meta["pending"])
        index._centroids = np.ascontiguousarray(arrays["centroids"], dtype=np.float32).reshape(-1, dim)
        index._centroid_ids = arrays["centroid_ids"].tolist()
        index._bm25 = BM25Index.restore({k[5:]: v for k, v in arrays.items() if k.startswith("bm25_")})
        if "faiss_ivf" in arrays:
            ivf = faiss.deserialize_index(arrays["faiss_ivf"])
            lists = np.ascontiguousarray(arrays["faiss_lists"], dtype=np.int64)
            if not isinstance(ivf, faiss.IndexIVF) or ivf.d != dim or not ivf.is_trained:
                raise ValueError("persisted hot index: Faiss quantizer does not match")
            if len(lists) != n or not np.all((lists >= 0) & (lists < ivf.nlist)):
                raise ValueError("persisted hot index: inverted lists do not match the rows")
            ivf.nprobe = _NPROBE
            ivf.add_core(n, faiss.swig_ptr(index._vectors), None, faiss.swig_ptr(lists))
            index._faiss = ivf
        else:
            index._faiss.add(index._vectors)
        return index


def _list_of_rows(ivf: faiss.Index, n: int) -> np.ndarray:
    """The inverted list each of the first ``n`` rows of an IVF index is stored in."""
    lists = np.full(n, -1, dtype=np.int64)
    invlists = faiss.extract_index_ivf(ivf).invlists
    assert invlists is not None
    for number in range(invlists.nlist):
        size = invlists.list_size(number)
        if size:
            lists[faiss.rev_swig_ptr(invlists.get_ids(number), size)] = number
    return lists


_DEAD = MemoryRecord(id="", user_id="", session_id="", kind="turn", text="", created_at=0.0)
