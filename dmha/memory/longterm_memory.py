"""``LongTermMemory``: the one object the server calls for long-term memory.

It composes the embedder, the Milvus store, the hot index, retrieval, clustering
and archival. Every method is blocking (the server wraps it with ``run_blocking``),
takes the user it acts for, and validates its input.

Writes go to Milvus first and are mirrored into the user's hot index only after
Milvus acknowledged, under the user's lock, so the hot index never holds a memory
Milvus lost and a concurrent reload never misses a write. Each write is recorded
in the store's per-user versions (:mod:`dmha.memory.versions`); hot indexes are
persisted stamped with the version they hold (:mod:`dmha.memory.hot_index_store`)
and loaded from disk only when that stamp is the store's current one. With several
replicas on one Milvus, a replica's write reaches the others' loaded indexes
through ``on_change`` (they drop and reload them).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from dmha.config import MemoryConfig
from dmha.errors import FailedPrecondition, InvalidArgument, MilvusUnavailable, NotFound
from dmha.ids import check_id
from dmha.memory.archival import Archiver, ArchiveResult
from dmha.memory.clustering import Clusterer
from dmha.memory.embedding import Embedder, SentenceTransformerEmbedder
from dmha.memory.hot_index import HotIndex
from dmha.memory.hot_index_store import HotIndexStore
from dmha.memory.listing import PageRequest, check_kind, count_memories
from dmha.memory.reclustering import Reclusterer
from dmha.memory.records import (
    CLUSTER_PENDING,
    ArchiveReport,
    ClusterReport,
    MemoryPage,
    MemoryRecord,
    MemoryStats,
    RetrievedMemory,
    index_text,
    memory_id,
)
from dmha.memory.retrieval import CountTokens, Retriever, approx_token_count, pack, shown_or_unwanted
from dmha.memory.store import LongTermStore, MilvusLongTermStore
from dmha.memory.summariser import ExtractiveSummariser, Summariser
from dmha.memory.working import WorkingMemory
from dmha.turn import Turn

__all__ = ["LongTermMemory", "build_longterm"]

log = logging.getLogger(__name__)

_MAX_TEXTS = 1000


class LongTermMemory:
    """Long-term memory for all users.

    Args:
        cfg: the ``memory`` config section.
        store: the Milvus store (source of truth).
        embedder: text embedder; its ``dim`` must equal ``store.dim``.
        working: the working memory archival reads from (None: the archive methods
            raise FailedPrecondition).
        summariser: summarises each archived batch; None = archive without summaries.
        cluster_summariser: writes cluster summaries (default: extractive, since an
            LLM call per cluster would make a background run take minutes).
        count_tokens: default token counter for budgets (default ~4 bytes per token).
        on_change: told each user id whose memories changed, after the store
            acknowledged (how other replicas' hot indexes are invalidated).
        persisted: where hot indexes are persisted; None = never.
    """

    def __init__(
        self,
        cfg: MemoryConfig,
        store: LongTermStore,
        embedder: Embedder,
        *,
        working: WorkingMemory | None = None,
        summariser: Summariser | None = None,
        cluster_summariser: Summariser | None = None,
        count_tokens: CountTokens = approx_token_count,
        on_change: Callable[[str], None] | None = None,
        persisted: HotIndexStore | None = None,
    ) -> None:
        self._cfg = cfg
        self.on_change = on_change
        self._store = store
        self._embedder = embedder
        self._count_tokens = count_tokens
        self._hot = HotIndex(
            lambda user: store.scan(user, with_vectors=True),
            store.dim,
            cfg.retrieval.hot_users,
            cfg.retrieval.ivf_threshold,
            versions=store,
            persisted=persisted,
        )
        self._retriever = Retriever(cfg.retrieval)
        self._reclusterer = Reclusterer(
            store, self._hot, Clusterer(cfg.clustering), cluster_summariser or ExtractiveSummariser(), embedder
        )
        self._archiver = (
            Archiver(working, embedder, self._write, cfg.longterm.archive_batch, summariser)
            if working is not None
            else None
        )

    @property
    def hot_index_loads(self) -> dict[str, int]:
        """How users' hot indexes were loaded since start: ``persisted`` / ``rebuilt``."""
        return dict(self._hot.loads)

    @property
    def store(self) -> LongTermStore:
        """The underlying store (for tools and benchmarks)."""
        return self._store

    # -- validation -----------------------------------------------------------------

    def _text(self, field: str, value: str, limit: int) -> str:
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgument(field, "must not be empty")
        size = len(value.encode("utf-8"))
        if size > limit:
            raise InvalidArgument(field, f"is {size} bytes; limit {limit}")
        return value

    # -- writing ------------------------------------------------------------------------

    def _write(self, records: Sequence[MemoryRecord]) -> None:
        by_user: dict[str, list[MemoryRecord]] = defaultdict(list)
        for rec in records:
            by_user[rec.user_id].append(rec)
        for user, recs in by_user.items():
            with self._hot.writing(user) as index:
                self._store.upsert(recs)
                if index is not None:
                    index.add(recs)
            self._changed(user)

    def _changed(self, user_id: str) -> None:
        if self.on_change is not None:
            self.on_change(user_id)

    def invalidate(self, user_id: str) -> None:
        """Drop a user's hot index (another replica changed their memories in Milvus)."""
        with self._hot.user_lock(user_id):
            self._hot.drop(user_id)

    def invalidate_all(self) -> None:
        """Drop every loaded hot index."""
        for user in self._hot.loaded_users():
            self.invalidate(user)

    def _pending(self, user_id: str) -> int:
        try:
            index = self._hot.get(user_id)
            if index is not None:
                return index.pending()
            return self._store.count(user_id, cluster_id=CLUSTER_PENDING)
        except MilvusUnavailable:
            # The archive itself was acknowledged; only the clustering hint is lost.
            log.warning("could not count unclustered memories of %s", user_id)
            return 0

    def _report(self, user_id: str, result: ArchiveResult) -> ArchiveReport:
        due = bool(result.records) and self._pending(user_id) >= self._cfg.clustering.every_n_memories
        return ArchiveReport(
            archived_turns=result.turns,
            summaries=sum(r.kind == "summary" for r in result.records),
            memory_ids=tuple(r.id for r in result.records),
            trimmed=result.trimmed,
            recluster_due=due,
        )

    def _require_archiver(self) -> Archiver:
        if self._archiver is None:
            raise FailedPrecondition("long-term memory was built without a working memory")
        return self._archiver

    def archive_overflow(self, user_id: str, session_id: str) -> ArchiveReport:
        """Archive the turns beyond working memory's cap, in whole ``archive_batch`` batches.

        Args:
            user_id: the user.
            session_id: the session.

        Returns:
            What was archived; ``recluster_due`` asks the caller to schedule :meth:`recluster`.

        Raises:
            InvalidArgument: bad ids.
            MilvusUnavailable: Milvus did not acknowledge; the turns stay in Redis (retry later).
            RedisUnavailable: working memory failed.
            FailedPrecondition: built without a working memory.
        """
        check_id(user_id, "user_id")
        check_id(session_id, "session_id")
        return self._report(user_id, self._require_archiver().archive(user_id, session_id, everything=False))

    def archive_session(self, user_id: str, session_id: str) -> ArchiveReport:
        """Archive every turn of an ended session (the last partial batch too).

        Args:
            user_id: the user.
            session_id: the session.

        Returns:
            What was archived.

        Raises:
            InvalidArgument: bad ids.
            MilvusUnavailable: Milvus did not acknowledge; the turns stay in Redis (retry later).
            RedisUnavailable: working memory failed.
            FailedPrecondition: built without a working memory.
        """
        check_id(user_id, "user_id")
        check_id(session_id, "session_id")
        return self._report(user_id, self._require_archiver().archive(user_id, session_id, everything=True))

    def add_texts(
        self,
        user_id: str,
        texts: Sequence[str],
        *,
        session_id: str = "",
        kind: Literal["fact", "summary"] = "fact",
        importance: float = 1.0,
        created_at: float | None = None,
    ) -> list[str]:
        """Store free texts (facts the user told, notes) as memories.

        The id derives from the user, kind, session and text, so adding the same text
        twice stores it once.

        Args:
            user_id: the owner.
            texts: the texts (1..1000, each within ``longterm.max_text_bytes``).
            session_id: optional session the texts belong to.
            kind: ``fact`` (default) or ``summary``.
            importance: 0..1, stored with the memory.
            created_at: epoch seconds (default: now).

        Returns:
            The memory ids, in input order.

        Raises:
            InvalidArgument: a bad field (named, with its limit).
            MilvusUnavailable: Milvus did not acknowledge.
        """
        check_id(user_id, "user_id")
        if session_id:
            check_id(session_id, "session_id")
        if kind not in ("fact", "summary"):
            raise InvalidArgument("kind", f"is {kind!r}; expected fact or summary")
        if not texts:
            raise InvalidArgument("texts", "must not be empty")
        if len(texts) > _MAX_TEXTS:
            raise InvalidArgument("texts", f"has {len(texts)} items; limit {_MAX_TEXTS}")
        if not 0.0 <= importance <= 1.0:
            raise InvalidArgument("importance", "must be between 0 and 1")
        limit = self._cfg.longterm.max_text_bytes
        for i, text in enumerate(texts):
            self._text(f"texts[{i}]", text, limit)
        now = time.time() if created_at is None else created_at
        records = [
            MemoryRecord(
                id=memory_id(user_id, kind, [session_id, " ".join(t.split())]),
                user_id=user_id,
                session_id=session_id,
                kind=kind,
                text=t.strip(),
                created_at=now,
                importance=importance,
            )
            for t in texts
        ]
        vectors = self._embedder.embed([index_text(r) for r in records])
        self._write([dataclasses.replace(r, vector=v) for r, v in zip(records, vectors, strict=True)])
        return [r.id for r in records]

    # -- reading ------------------------------------------------------------------------

    def search(
        self,
        user_id: str,
        query: str,
        k: int | None = None,
        token_budget: int | None = None,
        *,
        kinds: Iterable[str] | None = None,
        roles: Iterable[str] | None = None,
        exclude: Sequence[Turn] = (),
        count_tokens: CountTokens | None = None,
    ) -> list[RetrievedMemory]:
        """The user's memories most relevant to a query.

        Args:
            user_id: the user; only their memories are searched.
            query: the query text (non-empty, within ``retrieval.max_query_bytes``).
            k: the most results (default ``retrieval.top_k``; 1..``retrieval.max_k``).
            token_budget: total tokens the results' texts may use; None = unlimited.
            kinds: restrict to these memory kinds (default: all).
            roles: restrict archived turns to these speakers' (default: all); other
                kinds are unaffected. Turns of other roles still lend their neighbours
                a score; they are only left out of the results.
            exclude: turns the caller already shows (the working-memory window): a
                memory built only from them, or with the same text, is left out.
            count_tokens: token counter for the budget (default: the one given at construction).

        Returns:
            Results best first, de-duplicated, each with a ``why``.

        Raises:
            InvalidArgument: a bad field (named, with its limit).
            MilvusUnavailable: Milvus failed (first search of a user loads their index).
        """
        check_id(user_id, "user_id")
        self._text("query", query, self._cfg.retrieval.max_query_bytes)
        if k is None:
            k = self._cfg.retrieval.top_k
            if k == 0:
                return []
        if not 1 <= k <= self._cfg.retrieval.max_k:
            raise InvalidArgument("k", f"is {k}; must be between 1 and {self._cfg.retrieval.max_k}")
        if token_budget is not None and token_budget < 1:
            raise InvalidArgument("token_budget", f"is {token_budget}; must be at least 1")
        allowed = None
        if kinds is not None:
            allowed = frozenset(kinds)
            for kind in allowed:
                check_kind(kind)
        vector = self._embedder.embed([query])[0]
        index = self._hot.get(user_id)
        if index is not None:
            candidates = self._retriever.rank(index, vector, query, allowed)
        else:
            hits = self._store.search(user_id, vector, self._cfg.retrieval.candidates)
            if allowed is not None:
                hits = [h for h in hits if h[0].kind in allowed]
            candidates = self._retriever.rank_hits(hits)
        skip = shown_or_unwanted(roles, exclude)
        cap = self._cfg.retrieval.session_cap
        return pack(candidates, k, token_budget, count_tokens or self._count_tokens, skip, cap)

    def get(self, user_id: str, memory_id: str) -> MemoryRecord:
        """One memory of the user (without its vector).

        Raises:
            InvalidArgument: a malformed user or memory id.
            NotFound: no such memory for this user (including another user's id).
            MilvusUnavailable: Milvus failed.
        """
        check_id(user_id, "user_id")
        check_id(memory_id, "memory_id")
        index = self._hot.peek(user_id)
        rec = index.get(memory_id) if index is not None else None
        if rec is None:
            found = self._store.get(user_id, [memory_id])
            rec = found[0] if found else None
        if rec is None or rec.user_id != user_id:
            raise NotFound(f"memory {memory_id!r} not found")
        return rec

    def _records(self, user_id: str) -> list[MemoryRecord]:
        index = self._hot.get(user_id)
        if index is not None:
            return list(index.records())
        return list(self._store.scan(user_id))

    def export(self, user_id: str) -> Iterator[dict[str, Any]]:
        """Every memory of the user as JSON-able dicts (no vectors), read from Milvus.

        Raises:
            MilvusUnavailable: Milvus failed (possibly mid-iteration).
        """
        check_id(user_id, "user_id")
        for rec in self._store.scan(user_id):
            yield rec.to_dict()

    def stats(self, user_id: str) -> MemoryStats:
        """Counts of the user's memories.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        check_id(user_id, "user_id")
        records = self._records(user_id)
        return count_memories(records, hot=self._hot.peek(user_id) is not None)

    # -- deleting -----------------------------------------------------------------------

    def _forget(self, user_id: str, ids: Sequence[str]) -> None:
        index = self._hot.peek(user_id)
        if index is not None and ids:
            index.remove(ids)
        if ids:
            # No copy of deleted words may survive: the file goes now; the index is
            # persisted again (without them) when it is evicted or at shutdown.
            self._hot.discard_persisted(user_id)

    def delete(self, user_id: str, memory_id: str) -> list[str]:
        """Delete a memory. Deleting a turn also deletes the summaries built from it,
        so no copy of its words survives.

        Returns:
            Every deleted id (the memory first).

        Raises:
            NotFound: no such memory for this user.
            MilvusUnavailable: Milvus failed.
        """
        rec = self.get(user_id, memory_id)
        with self._hot.writing(user_id):
            deleted = self._store.delete(user_id, [rec.id])
            if rec.kind == "turn" and rec.source_ids:
                deleted += [i for i in self._store.delete_where(user_id, source_id=rec.source_ids[0]) if i != rec.id]
            self._forget(user_id, deleted)
        self._changed(user_id)
        if rec.id not in deleted:
            raise NotFound(f"memory {memory_id!r} not found")
        return deleted

    def delete_session(self, user_id: str, session_id: str) -> int:
        """Delete every memory of one session. Cluster summaries (which may quote it)
        are dropped too; the next :meth:`recluster` rebuilds them.

        Returns:
            How many of the session's memories were deleted.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        check_id(user_id, "user_id")
        check_id(session_id, "session_id")
        with self._hot.writing(user_id):
            ids = self._store.delete_where(user_id, session_id=session_id)
            quoted = self._store.delete_where(user_id, kind="cluster_summary") if ids else []
            self._forget(user_id, ids + quoted)
        self._changed(user_id)
        return len(ids)

    def delete_all(self, user_id: str) -> int:
        """Delete every memory of the user.

        Returns:
            How many were deleted.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        check_id(user_id, "user_id")
        with self._hot.writing(user_id):
            ids = self._store.delete_where(user_id)
            self._hot.discard(user_id)
        self._changed(user_id)
        return len(ids)

    # -- clustering ---------------------------------------------------------------------

    def recluster(self, user_id: str) -> ClusterReport:
        """Cluster the user's memories, write cluster ids back, rebuild cluster summaries.

        Safe to run in the background while the user chats: the heavy part works on
        a snapshot; memories added meanwhile stay pending for the next run.

        Returns:
            Counts and timing.

        Raises:
            MilvusUnavailable: Milvus failed (cluster ids may be partly written; a
                rerun fixes them).
        """
        check_id(user_id, "user_id")
        report = self._reclusterer.run(user_id)
        self._changed(user_id)
        return report

    # -- lifecycle ----------------------------------------------------------------------

    def warm(self, user_ids: Iterable[str]) -> None:
        """Load users' hot indexes now (at start-up) instead of on their first search.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        for user in user_ids:
            self._hot.get(check_id(user, "user_id"))

    def put_records(self, records: Sequence[MemoryRecord]) -> None:
        """Store memories that already carry their vectors (imports, benchmarks).

        Args:
            records: records with vectors of the store's dimension; may mix users.

        Raises:
            InvalidArgument: a bad user id, or a record without a fitting vector.
            MilvusUnavailable: Milvus did not acknowledge.
        """
        for rec in records:
            check_id(rec.user_id, "user_id")
            if rec.vector is None or len(rec.vector) != self._store.dim:
                raise InvalidArgument("vector", f"of memory {rec.id} must have {self._store.dim} dimensions")
        self._write(records)

    def probe(self, timeout: float) -> None:
        """The health probe: the store answers within ``timeout`` seconds.

        Raises:
            MilvusUnavailable: it does not.
        """
        self._store.probe(timeout)

    def close(self) -> None:
        """Persist the loaded hot indexes, then release the store (and Milvus Lite)."""
        try:
            self._hot.persist_all()
        finally:
            self._store.close()

    def list(
        self,
        user_id: str,
        page_size: int | None = None,
        page_token: str = "",
        kind: str | None = None,
        session_id: str | None = None,
    ) -> MemoryPage:
        """A page of the user's memories, newest first.

        Args:
            user_id: the user.
            page_size: 1..1000 (default 50).
            page_token: ``next_page_token`` of the previous page ("" for the first).
            kind: only this kind.
            session_id: only this session.

        Returns:
            The page and the token of the next one ("" at the end).

        Raises:
            InvalidArgument: bad page size, token or kind.
            MilvusUnavailable: Milvus failed.
        """
        check_id(user_id, "user_id")
        if session_id is not None:
            check_id(session_id, "session_id")
        request = PageRequest.parse(page_size, page_token, kind, session_id)
        return request.select(self._records(user_id))


def build_longterm(
    cfg: MemoryConfig,
    data_dir: Path | str,
    *,
    working: WorkingMemory | None = None,
    summariser: Summariser | None = None,
    embedder: Embedder | None = None,
    count_tokens: CountTokens = approx_token_count,
    summaries: bool = True,
) -> LongTermMemory:
    """Build long-term memory from config (callers skip it when ``longterm.enabled`` is off).

    Args:
        cfg: the ``memory`` config section.
        data_dir: DMHA's data dir (the default Milvus Lite file lives there).
        working: the working memory to archive from.
        summariser: the LLM summariser; used when ``longterm.summarise`` is on,
            otherwise (or when None) the extractive one.
        embedder: an embedder to share (default: the configured sentence-transformers model).
        count_tokens: default token counter for search budgets.
        summaries: False archives turns without summary records (benchmark ablation).

    Returns:
        The ready facade (the embedding model itself loads on first use).

    Raises:
        StartupError: Milvus cannot be opened (names the path/URI), or the model folder is missing.
    """
    embedder = embedder or SentenceTransformerEmbedder(cfg.embedding)
    store = MilvusLongTermStore(cfg.longterm, Path(data_dir), embedder.dim)
    chosen: Summariser | None = None
    if summaries:
        chosen = summariser if (cfg.longterm.summarise and summariser is not None) else ExtractiveSummariser()
    hot = cfg.hot_index
    persisted = (
        HotIndexStore(Path(hot.dir) if hot.dir else Path(data_dir) / "hot_index", hot.min_memories)
        if hot.persist
        else None
    )
    return LongTermMemory(
        cfg, store, embedder, working=working, summariser=chosen, count_tokens=count_tokens, persisted=persisted
    )
