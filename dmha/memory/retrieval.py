"""Hybrid retrieval: dense and lexical signals fused into one order, then packed.

Two fusions (``memory.retrieval.fusion``):

- ``score`` (default): the candidates are the best ``candidates`` memories by dense
  similarity (Faiss) and by BM25 over the date-prefixed text -- each turn read
  together with the turn said before it (``lexical_context``) -- plus the turns
  around them in their sessions. Each signal is z-normalised over the candidates
  and summed with its weight; then every turn gains a share
  (``neighbour_weights``) of the better score of its two neighbours at distance
  1, 2, ...: the answer often sits beside the line that matches the question.
  A memory without neighbours (a summary, a fact) counts as its own neighbour.
  Chosen by leave-one-conversation-out on the LoCoMo dev split (BENCHMARKS.md).
- ``rrf``: weighted reciprocal-rank fusion, ``sum(weight / (rrf_k + rank))``, of
  the rankings ``dense``, ``lexical``, ``cluster`` (candidates in the clusters
  nearest the query), ``recency`` and ``context`` (summaries ranked by their
  turns' fused scores, then the turns beside the best hits).

Packing walks the fused order,
skips what is already represented (a summary whose turns were all taken, a turn a
taken summary quotes, a repeated text), and stops at ``k`` results or the token
budget: a summary and its source turns never spend the budget twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dmha.config import RetrievalConfig
from dmha.memory.bm25 import tokenize
from dmha.memory.hot_index import UserIndex
from dmha.memory.records import MemoryRecord, RetrievedMemory
from dmha.turn import Turn

__all__ = [
    "Candidate",
    "Retriever",
    "approx_token_count",
    "coverage",
    "pack",
    "rrf_fuse",
    "shown_or_unwanted",
]

CountTokens = Callable[[str], int]

_CONTEXT_HITS = 10  # how many top hits lend their summary / neighbours to "context"
_ROUTE_CLUSTERS = 2


def approx_token_count(text: str) -> int:
    """A tokenizer-free estimate (~4 UTF-8 bytes per token, as for English BPE).

    Args:
        text: any text.

    Returns:
        At least 1.
    """
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def rrf_fuse(
    rankings: Mapping[str, Sequence[str]],
    weights: Mapping[str, float],
    k0: int = 60,
) -> list[tuple[str, float, dict[str, int]]]:
    """Weighted reciprocal-rank fusion.

    Args:
        rankings: signal name -> ids, best first (an id repeated in one list counts once).
        weights: signal name -> weight (missing = 1.0; 0 drops the signal).
        k0: the RRF constant.

    Returns:
        ``(id, score, {signal: 1-based rank})``, best first; ties broken by id.
    """
    scores: dict[str, float] = {}
    signals: dict[str, dict[str, int]] = {}
    for name, ids in rankings.items():
        w = weights.get(name, 1.0)
        if w <= 0:
            continue
        seen: set[str] = set()
        for rank, mid in enumerate(ids, start=1):
            if mid in seen:
                continue
            seen.add(mid)
            scores[mid] = scores.get(mid, 0.0) + w / (k0 + rank)
            signals.setdefault(mid, {})[name] = rank
    fused = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(mid, score, signals[mid]) for mid, score in fused]


def coverage(record: MemoryRecord) -> frozenset[str]:
    """The turn ids a memory stands for (a turn: itself; a summary: its sources)."""
    return frozenset(record.source_ids)


_CONTAINED = 0.8  # share of a turn's words a summary must quote to stand in for it


@dataclass(frozen=True)
class Candidate:
    """A fused candidate before packing."""

    record: MemoryRecord
    score: float
    signals: Mapping[str, int]


def _why(signals: Mapping[str, int]) -> str:
    order = ("dense", "lexical", "cluster", "context", "recency")
    # Every candidate has a recency rank; it only explains a result when it is among the newest.
    parts = [f"{s}#{signals[s]}" for s in order if s in signals and (s != "recency" or signals[s] <= 3)]
    return " ".join(parts) or "recency"


def pack(
    candidates: Sequence[Candidate],
    k: int,
    token_budget: int | None = None,
    count_tokens: CountTokens = approx_token_count,
    skip: Callable[[MemoryRecord], bool] | None = None,
    session_cap: int = 0,
) -> list[RetrievedMemory]:
    """Choose results in fused order: de-duplicated, at most ``k``, within the budget.

    Skipped as redundant: a text equal to a chosen one; a summary whose source turns
    are all already represented; a turn already chosen, or whose words (80 %) a
    chosen summary already quotes. A turn a chosen summary only paraphrases is kept:
    the summary links it but does not carry its content. A candidate too long for
    the remaining budget is skipped, and a shorter later one may still fit.

    Args:
        candidates: best first.
        k: the most results.
        token_budget: total tokens allowed for the results' texts; None = unlimited.
        count_tokens: token counter for budget accounting.
        skip: memories the caller does not want (e.g. already in the prompt); they
            take neither a place nor budget.
        session_cap: at most this many turns of one session (0 = no cap).

    Returns:
        The chosen memories, best first.
    """
    out: list[RetrievedMemory] = []
    verbatim: set[str] = set()  # turn ids whose text was chosen
    quoted_by: dict[str, list[set[str]]] = {}  # turn id -> word sets of chosen summaries linking it
    texts: set[str] = set()
    per_session: dict[str, int] = {}
    used = 0
    for cand in candidates:
        if len(out) >= k:
            break
        rec = cand.record
        if skip is not None and skip(rec):
            continue
        if session_cap and rec.kind == "turn" and per_session.get(rec.session_id, 0) >= session_cap:
            continue
        cov = coverage(rec)
        norm = " ".join(rec.text.lower().split())
        if norm in texts:
            continue
        words: set[str] | None = None
        if rec.kind == "turn" and cov:
            if cov <= verbatim:
                continue
            words = set(tokenize(rec.text))
            holders = [h for tid in cov for h in quoted_by.get(tid, ())]
            if words and any(len(words & h) >= _CONTAINED * len(words) for h in holders):
                continue
        elif cov and cov <= (verbatim | quoted_by.keys()):
            continue
        if token_budget is not None:
            cost = count_tokens(rec.text)
            if used + cost > token_budget:
                continue
            used += cost
        texts.add(norm)
        if rec.kind == "turn":
            verbatim |= cov
            per_session[rec.session_id] = per_session.get(rec.session_id, 0) + 1
        else:
            held = set(tokenize(rec.text))
            for tid in cov:
                quoted_by.setdefault(tid, []).append(held)
        out.append(
            RetrievedMemory(
                id=rec.id,
                kind=rec.kind,
                text=rec.text,
                score=cand.score,
                why=_why(cand.signals),
                session_id=rec.session_id,
                created_at=rec.created_at,
                source_ids=rec.source_ids,
                role=rec.role,
                cluster_id=rec.cluster_id,
            )
        )
    return out


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def shown_or_unwanted(roles: Iterable[str] | None, shown: Sequence[Turn]) -> Callable[[MemoryRecord], bool] | None:
    """The memories a prompt search leaves out, as a ``pack`` ``skip`` predicate.

    Args:
        roles: archived turns of other speakers are left out (None: keep all);
            other kinds are unaffected.
        shown: turns already in the prompt (the working-memory window): a memory
            built only from them, or with the same text, would only repeat them.

    Returns:
        The predicate, or None when nothing is left out.
    """
    allowed = frozenset(roles) if roles is not None else None
    if allowed is None and not shown:
        return None
    shown_ids = frozenset(t.turn_id for t in shown)
    shown_texts = frozenset(_normal(t.text) for t in shown)

    def skip(rec: MemoryRecord) -> bool:
        if allowed is not None and rec.kind == "turn" and rec.role not in allowed:
            return True
        if rec.source_ids and shown_ids.issuperset(rec.source_ids):
            return True
        return _normal(rec.text) in shown_texts

    return skip


def _z(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """``values`` standardised by the mean and deviation of ``values[sample]``."""
    ref = values[sample]
    if len(ref) == 0:
        return np.zeros_like(values)
    return (values - ref.mean()) / (ref.std() + 1e-6)


class Retriever:
    """Runs the signals over one user's index and fuses them.

    Args:
        cfg: the ``memory.retrieval`` config section.
    """

    def __init__(self, cfg: RetrievalConfig) -> None:
        self._cfg = cfg
        self._weights = {
            "dense": cfg.weight_dense,
            "lexical": cfg.weight_lexical,
            "cluster": cfg.weight_cluster,
            "recency": cfg.weight_recency,
            "context": cfg.weight_context,
        }

    def rank(
        self,
        index: UserIndex,
        query_vector: np.ndarray,
        query: str,
        kinds: frozenset[str] | None = None,
    ) -> list[Candidate]:
        """Fused candidates from a user's hot index, best first.

        Args:
            index: the user's index.
            query_vector: the unit query embedding.
            query: the query text (for BM25).
            kinds: memory kinds allowed in the results (None = all).

        Returns:
            Candidates, best first (not yet de-duplicated or packed).
        """
        # One lock for the whole ranking: rows stay valid (no compaction, no delete)
        # between the signals that name them.
        with index.lock:
            if self._cfg.fusion == "score":
                return self._rank_scored(index, query_vector, query, kinds)
            return self._rank_locked(index, query_vector, query, kinds)

    def _rank_scored(
        self,
        index: UserIndex,
        query_vector: np.ndarray,
        query: str,
        kinds: frozenset[str] | None,
    ) -> list[Candidate]:
        depth = self._cfg.candidates
        tokens = tokenize(query)

        def allowed(row: int) -> bool:
            rec = index.record_at(row)
            return rec is not None and (kinds is None or rec.kind in kinds)

        dense = [r for r, _ in index.dense(query_vector, depth) if allowed(r)]
        keys, bm25 = index.lexical_in_context(tokens) if self._cfg.lexical_context else index.lexical_scores(tokens)
        if len(keys) > depth:
            part = np.argpartition(-bm25, depth - 1)[:depth]
            top_keys, top_scores = keys[part], bm25[part]
        else:
            top_keys, top_scores = keys, bm25
        lexical = [int(top_keys[i]) for i in np.lexsort((top_keys, -top_scores)) if allowed(int(top_keys[i]))]
        pool = list(dict.fromkeys(dense + lexical))
        if not pool:
            return []
        weights = self._cfg.neighbour_weights
        reach = [np.asarray(pool, dtype=np.int64)]
        for distance in range(1, len(weights) + 1):
            reach.extend(index.around(reach[0], distance))
        ranked = [r for r in dict.fromkeys(np.concatenate(reach).tolist()) if r >= 0 and allowed(r)]
        # Scores are needed for the ranked rows and for their own neighbours.
        rows = np.asarray(ranked, dtype=np.int64)
        links = [index.around(rows, d) for d in range(1, len(weights) + 1)]
        need = np.unique(np.concatenate([rows, *[x for pair in links for x in pair]]))
        need = need[need >= 0]
        d = index.similarity(query_vector, need.tolist()).astype(np.float64)
        b = np.zeros(len(need), dtype=np.float64)
        if len(keys):  # keys come sorted (np.unique): look the needed rows up by bisection
            at_key = np.minimum(np.searchsorted(keys, need), len(keys) - 1)
            hit = keys[at_key] == need
            b[hit] = bm25[at_key[hit]]
        # z-statistics over the pool only: the neighbours pulled in are not a sample
        # of what matched, and must not shift the scale.
        in_pool = np.isin(need, np.asarray(pool, dtype=np.int64))
        fused = self._cfg.weight_dense * _z(d, in_pool) + self._cfg.weight_lexical * _z(b, in_pool)
        at = np.searchsorted(need, rows)
        own = fused[at]
        total = own.copy()
        for w, (before, after) in zip(weights, links, strict=True):
            if w <= 0:
                continue
            side = [np.where(x >= 0, fused[np.searchsorted(need, np.maximum(x, 0))], own) for x in (before, after)]
            total += w * np.maximum(side[0], side[1])
        dense_rank = {r: i for i, r in enumerate(dense, start=1)}
        lexical_rank = {r: i for i, r in enumerate(lexical, start=1)}
        out: list[Candidate] = []
        for i in np.lexsort((rows, -total)).tolist():
            row = int(rows[i])
            rec = index.record_at(row)
            if rec is None:
                continue
            signals: dict[str, int] = {}
            if row in dense_rank:
                signals["dense"] = dense_rank[row]
            if row in lexical_rank:
                signals["lexical"] = lexical_rank[row]
            if not signals:
                signals["context"] = len(out) + 1
            out.append(Candidate(rec, float(total[i]), signals))
        return out

    def _rank_locked(
        self,
        index: UserIndex,
        query_vector: np.ndarray,
        query: str,
        kinds: frozenset[str] | None,
    ) -> list[Candidate]:
        depth = self._cfg.candidates

        def allowed(row: int) -> MemoryRecord | None:
            rec = index.record_at(row)
            return rec if rec is not None and (kinds is None or rec.kind in kinds) else None

        dense = [(r, s) for r, s in index.dense(query_vector, depth) if allowed(r)]
        lexical = [(r, s) for r, s in index.lexical(tokenize(query), depth) if allowed(r)]
        pool = list(dict.fromkeys([r for r, _ in dense] + [r for r, _ in lexical]))
        records = {r: index.record_at(r) for r in pool}
        rankings: dict[str, list[str]] = {
            "dense": [records[r].id for r, _ in dense],  # type: ignore[union-attr]
            "lexical": [records[r].id for r, _ in lexical],  # type: ignore[union-attr]
        }
        if self._weights["cluster"] > 0:
            sims = dict(zip(pool, index.similarity(query_vector, pool).tolist(), strict=True))
            near = set(index.nearest_clusters(query_vector, _ROUTE_CLUSTERS))
            routed = [r for r in pool if records[r].cluster_id in near]  # type: ignore[union-attr]
            routed.sort(key=lambda r: -sims[r])
            rankings["cluster"] = [records[r].id for r in routed]  # type: ignore[union-attr]
        if self._weights["recency"] > 0:
            recent = sorted(pool, key=lambda r: -records[r].created_at)  # type: ignore[union-attr]
            rankings["recency"] = [records[r].id for r in recent]  # type: ignore[union-attr]
        fused = rrf_fuse(rankings, self._weights, self._cfg.rrf_k)
        if self._weights["context"] > 0:
            rankings["context"] = self._context(index, fused, kinds)
            fused = rrf_fuse(rankings, self._weights, self._cfg.rrf_k)
        out: list[Candidate] = []
        for mid, score, signals in fused:
            rec = index.get(mid)
            if rec is not None:
                out.append(Candidate(rec, score, signals))
        return out

    @staticmethod
    def _context(
        index: UserIndex,
        fused: Sequence[tuple[str, float, dict[str, int]]],
        kinds: frozenset[str] | None,
    ) -> list[str]:
        """The context ranking: parent summaries, then the neighbours of the top hits.

        A summary ranks by the summed fused score of its turns among the candidates
        (parent-document retrieval: the batch holding several good hits is the best
        context); then come the turns said just before and after each of the
        best ``_CONTEXT_HITS`` hits, since an answer often sits beside the line
        that matches the question.
        """
        parents: dict[str, float] = {}
        want_summaries = kinds is None or "summary" in kinds
        for mid, score, _ in fused:
            rec = index.get(mid)
            if rec is None or rec.kind != "turn" or not rec.source_ids or not want_summaries:
                continue
            for owner in index.owners(rec.source_ids[0]):
                parent = index.get(owner)
                if parent is not None and parent.kind == "summary":
                    parents[owner] = parents.get(owner, 0.0) + score
        out = [mid for mid, _ in sorted(parents.items(), key=lambda kv: (-kv[1], kv[0]))]
        if kinds is None or "turn" in kinds:
            for mid, _, _ in fused[:_CONTEXT_HITS]:
                row = index.row_of(mid)
                for nrow in index.neighbours(row) if row is not None else ():
                    nrec = index.record_at(nrow)
                    if nrec is not None:
                        out.append(nrec.id)
        return out

    def rank_hits(self, hits: Sequence[tuple[MemoryRecord, float]]) -> list[Candidate]:
        """Fuse a plain dense result list (the path without a hot index) with recency.

        Args:
            hits: ``(record, similarity)`` best first, e.g. from Milvus.

        Returns:
            Candidates, best first.
        """
        by_id = {rec.id: rec for rec, _ in hits}
        rankings = {
            "dense": [rec.id for rec, _ in hits],
            "recency": [rec.id for rec, _ in sorted(hits, key=lambda h: -h[0].created_at)],
        }
        fused = rrf_fuse(rankings, self._weights, self._cfg.rrf_k)
        return [Candidate(by_id[mid], score, sig) for mid, score, sig in fused]
