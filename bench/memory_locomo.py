"""Long-term memory benchmark: LoCoMo evidence recall at equal tokens, ingest, scale latency.

Recall: each conversation is ingested turn by turn, in order, as one user's history
through the server's code path -- working memory in a real embedded Redis, archival
on overflow and at session end with the summariser the server uses, the Milvus Lite
store, clustering when due -- then every QA item is searched and the evidence turns
(``dia_id``) its results carry are counted two ways:

- **strict** (the headline): a turn counts only when its words come back --
  returned verbatim, or 80 % of its content words quoted by a returned summary;
- **generous**: a summary also covers every turn it links to (the figure issue 3
  reported as ``dmha``).

Two figures per system, baselines in the same run over the same raw turns
("speaker: text"): dense-only MiniLM and BM25 (rank-bm25, plain word tokens):

- recall at a token budget (``--budgets``, default 256 / 512 / 1024 tokens of the
  served model's tokenizer): DMHA searches with that ``token_budget`` as the server
  does; a baseline takes turns from the top of its ranking while they fit;
- recall@k (``--k``) with the mean tokens the top-k costs.

``--ablation`` adds retrieval variants over the same ingested memories (the table in
BENCHMARKS.md); ``--loo`` picks the retrieval configuration by leave-one-conversation-
out over a small grid and reports each held-out conversation's figure (mean and
spread). Grid and ablation figures pack the unbudgeted ranking greedily into each
budget (one search per question and variant); the headline rows search with the
budget itself.

Scale: one synthetic user with ``--scale`` memories (default 100k). Their texts are
random sentences over a generated topic vocabulary and their vectors are synthetic
(normalised sums of fixed random word vectors, so topics form clusters) inserted
straight into Milvus: embedding 100k texts with MiniLM takes ~7 minutes on 2 cores.
Queries are embedded by the real MiniLM, so latency is end to end (embedding
included) even though relevance there is meaningless. The memories are written
through ``LongTermMemory.put_records`` (the write path with its store versions); the
hot index is then loaded twice: rebuilt from Milvus (and persisted), and, after a
restart of the long-term memory, from the persisted copy. Clustering quality is the
adjusted Rand index of the clusters against the generating topics.

Embeddings and summaries are cached under ``--cache-dir`` (keyed by text, model and
summariser), so a rerun re-measures retrieval without re-embedding or re-summarising;
the LLM summariser (``--summariser llm``) costs ~10-20 s per batch on 2 CPU cores the
first time.

Usage (from the repository root)::

    python bench/memory_locomo.py --scale 0                     # recall, served summariser
    python bench/memory_locomo.py --scale 0 --ablation --loo    # + the ablation and LOO
    python bench/memory_locomo.py --scale 0 --only conv-30 --summariser llm extractive none \\
        --prompt-kinds turn summary cluster_summary fact     # which summaries, when returned
    python bench/memory_locomo.py --data -                      # scale test only

The data set stays outside the repository (license: evaluation only).
Prints tables, then ONE final JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from locomo_recall import print_recall, run_recall  # noqa: E402  (after the path setup)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "../shared/bench-data/locomo/locomo-dev.json",
        help="LoCoMo-layout JSON (default: ../shared/bench-data/locomo/locomo-dev.json; - = skip recall)",
    )
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="cut-offs for recall@k")
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024], help="token budgets")
    p.add_argument(
        "--summariser",
        nargs="+",
        choices=["served", "extractive", "llm", "none"],
        default=["served"],
        help="summaries of archived batches: served = what the default config uses; "
        "several = one ingest each, the first is the headline (none = turns only)",
    )
    p.add_argument(
        "--prompt-kinds",
        nargs="+",
        choices=["turn", "summary", "cluster_summary", "fact"],
        default=None,
        help="memory kinds the headline searches draw from (default: memory.retrieval.prompt_kinds, as served)",
    )
    p.add_argument("--conversations", type=int, default=0, help="use only the first N (0 = all)")
    p.add_argument("--only", nargs="+", default=[], help="use only these sample ids (e.g. conv-30)")
    p.add_argument("--ablation", action="store_true", help="also measure the retrieval variants")
    p.add_argument("--loo", action="store_true", help="leave-one-conversation-out choice of the configuration")
    p.add_argument(
        "--loo-grid",
        choices=["fusion", "session-cap", "depth"],
        default="fusion",
        help="the configurations --loo chooses among (fusion: issue 12's grid; session-cap: per-session caps; "
        "depth: candidates per signal and neighbour reach)",
    )
    p.add_argument("--scale", type=int, default=100_000, help="memories of the scale test (0 = skip)")
    p.add_argument("--queries", type=int, default=200, help="searches timed in the scale test")
    p.add_argument("--threads", type=int, default=1, help="torch / Faiss threads")
    p.add_argument("--data-dir", type=Path, default=None, help="working dir (default: a temp dir)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "dmha-bench",
        help="embedding and summary caches (default: ~/.cache/dmha-bench)",
    )
    return p.parse_args(argv)


# -- scale ------------------------------------------------------------------------------


def word_list(model_dir: Path | None) -> list[str]:
    """Whole English words from the embedding model's WordPiece vocabulary (else pseudo-words)."""
    vocab = model_dir / "vocab.txt" if model_dir else None
    if vocab is not None and vocab.exists():
        words = [w for w in vocab.read_text(encoding="utf-8").split() if w.isalpha() and w.isascii() and len(w) >= 3]
        if len(words) >= 1000:
            return sorted(set(words))
    rng = np.random.default_rng(0)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "ge", "hu", "bi", "fe"]
    return sorted({"".join(rng.choice(syll, size=rng.integers(2, 4))) for _ in range(8000)})


def synthetic(n: int, dim: int, words_in: list[str], seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Random topical sentences, bag-of-random-word-vector embeddings (topics cluster),
    and each sentence's generating topic (the ground truth for clustering quality)."""
    rng = np.random.default_rng(seed)
    words = np.array(words_in)
    wvec = rng.standard_normal((len(words), dim)).astype(np.float32)
    topics = [rng.choice(len(words), size=12, replace=False) for _ in range(300)]
    texts: list[str] = []
    vectors = np.zeros((n, dim), dtype=np.float32)
    truth = np.zeros(n, dtype=np.int64)
    for i in range(n):
        truth[i] = rng.integers(len(topics))
        topic = topics[truth[i]]
        length = int(rng.integers(8, 15))
        pick = np.where(rng.random(length) < 0.7, rng.choice(topic, size=length), rng.integers(len(words), size=length))
        texts.append(" ".join(words[pick]))
        vectors[i] = wvec[pick].sum(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors, truth


def wait_until_idle(limit_s: float = 180.0) -> float:
    """Seconds until this process uses < 15 % of a core over 2 s (Milvus Lite's background work)."""
    import resource

    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(2.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if used < 0.3:
            break
    return round(time.perf_counter() - start, 1)


def timed_searches(ltm: Any, embedder: Any, user: str, queries: list[str]) -> dict[str, float]:
    lat, emb = [], []
    for q in queries:
        t0 = time.perf_counter()
        ltm.search(user, q, 10)
        lat.append((time.perf_counter() - t0) * 1000)
    for q in queries[:50]:
        t0 = time.perf_counter()
        embedder.embed([q])
        emb.append((time.perf_counter() - t0) * 1000)
    return {
        "p50": round(float(np.percentile(lat, 50)), 2),
        "p95": round(float(np.percentile(lat, 95)), 2),
        "embed_p50": round(float(np.percentile(emb, 50)), 2),
    }


def run_scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    from dmha.config import LongTermConfig, MemoryConfig
    from dmha.memory import (
        MemoryRecord,
        SentenceTransformerEmbedder,
        build_longterm,
        memory_id,
    )
    from dmha.memory.clustering import Clusterer

    # A 60 s Milvus call timeout (default 10 s): on a loaded 2-core machine Milvus Lite
    # has taken over 10 s to upsert a 2,000-row batch of the synthetic insert.
    cfg = MemoryConfig(longterm=LongTermConfig(timeout_seconds=60))
    embedder = SentenceTransformerEmbedder(cfg.embedding)
    embedder.embed(["warm up"])
    ltm = build_longterm(cfg, work, embedder=embedder)
    user = "scale-user"
    n = args.scale
    out: dict[str, Any] = {
        "scale_memories": n,
        "scale_vectors": "synthetic: random topical sentences, vectors = sums of random word vectors",
    }
    try:
        texts, vectors, truth = synthetic(n, embedder.dim, word_list(embedder.path))
        t0 = time.perf_counter()
        batch = 2000
        for start in range(0, n, batch):
            recs = [
                MemoryRecord(
                    id=memory_id(user, "turn", [f"syn-{i}"]),
                    user_id=user,
                    session_id=f"s{i // 200}",
                    kind="turn",
                    text=texts[i],
                    created_at=1_600_000_000.0 + i,
                    source_ids=(f"syn-{i}",),
                    role="user",
                    vector=vectors[i],
                )
                for i in range(start, min(n, start + batch))
            ]
            ltm.put_records(recs)  # the write path: version rows, then Milvus
        out["scale_insert_rows_per_s"] = round(n / (time.perf_counter() - t0), 1)
        rng = np.random.default_rng(1)
        queries = [" ".join(texts[int(i)].split()[:6]) for i in rng.integers(n, size=args.queries)]
        t0 = time.perf_counter()
        ltm.warm([user])  # no persisted copy yet: rebuilt from Milvus (and then persisted)
        out["scale_hot_load_s"] = round(time.perf_counter() - t0, 2)
        out["scale_hot_load_from"] = ltm.hot_index_loads
        before = [[m.id for m in ltm.search(user, q, 10)] for q in queries[:20]]
        ltm.close()
        ltm = build_longterm(cfg, work, embedder=embedder)  # the restarted process
        t0 = time.perf_counter()
        ltm.warm([user])  # from the persisted copy: its version stamp is the store's
        out["scale_hot_load_persisted_s"] = round(time.perf_counter() - t0, 2)
        out["scale_hot_load_persisted_from"] = ltm.hot_index_loads
        after = [[m.id for m in ltm.search(user, q, 10)] for q in queries[:20]]
        out["scale_persisted_same_results"] = before == after
        for q in queries[:5]:
            ltm.search(user, q, 10)  # warm caches (BM25 postings arrays)
        # Embedded Milvus Lite runs in this process: after a 100k bulk insert it
        # compacts and indexes segments in background threads for about a minute,
        # taking CPU (and the GIL) from searches. Measured both while that runs and
        # once the process is idle again (normal archival writes a few rows at a time).
        busy = timed_searches(ltm, embedder, user, queries[:50])
        out["scale_search_ms_p50_during_bulk_compaction"] = busy["p50"]
        out["scale_bulk_compaction_settle_s"] = wait_until_idle()
        steady = timed_searches(ltm, embedder, user, queries)
        out["scale_search_ms_p50"] = steady["p50"]
        out["scale_search_ms_p95"] = steady["p95"]
        out["scale_query_embed_ms_p50"] = steady["embed_p50"]
        t0 = time.perf_counter()
        fit = Clusterer(cfg.clustering).fit(vectors)
        out["scale_cluster_fit_s"] = round(time.perf_counter() - t0, 2)
        out["scale_clusters"] = fit.clusters
        out["scale_noise_share"] = round(float(np.mean(fit.labels < 0)), 3)
        # Quality against the generating topics, over the memories put in a cluster.
        kept = fit.labels >= 0
        out["scale_cluster_ari"] = round(float(adjusted_rand_score(truth[kept], fit.labels[kept])), 3)
        report = ltm.recluster(user)  # fit + cluster ids written back + cluster summaries
        out["scale_recluster_job_s"] = round(report.seconds, 2)
        out["scale_recluster_noise"] = report.noise
        again = ltm.recluster(user)  # ids are stable: only changed memberships are written
        out["scale_recluster_again_s"] = round(again.seconds, 2)
        # What the first run no longer writes (first-seen noise keeps its pending id in
        # Milvus): the time to write that many cluster ids, measured last since it
        # overwrites the ids of arbitrary memories.
        some = [memory_id(user, "turn", [f"syn-{i}"]) for i in range(report.noise)]
        t0 = time.perf_counter()
        ltm.store.set_clusters(user, dict.fromkeys(some, -1))
        out["scale_noise_write_avoided_s"] = round(time.perf_counter() - t0, 2)
    finally:
        ltm.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dmha-bench-") as tmp:
        work = args.data_dir or Path(tmp)
        result: dict[str, Any] = {"bench": "memory_locomo", "data": str(args.data), "threads": args.threads}
        if args.data and str(args.data) != "-":
            result.update(run_recall(args, work / "recall"))
            print_recall(result)
            print(
                f"ingest: {result['ingest_turns_per_s']} turns/s ({result['turns']} turns, "
                f"{result['memories']} memories); search p50 {result['locomo_search_ms_p50']} ms"
            )
        if args.scale:
            result.update(run_scale(args, work / "scale"))
            print(
                f"scale {args.scale}: search p50 {result['scale_search_ms_p50']} ms, "
                f"p95 {result['scale_search_ms_p95']} ms (query embedding p50 "
                f"{result['scale_query_embed_ms_p50']} ms; p50 "
                f"{result['scale_search_ms_p50_during_bulk_compaction']} ms while Milvus Lite "
                f"compacted the bulk insert for {result['scale_bulk_compaction_settle_s']} s); "
                f"cluster fit {result['scale_cluster_fit_s']} s, recluster job "
                f"{result['scale_recluster_job_s']} s (first), "
                f"{result['scale_recluster_again_s']} s (rerun), ARI vs topics "
                f"{result['scale_cluster_ari']}; hot index load {result['scale_hot_load_s']} s rebuilt "
                f"from Milvus, {result['scale_hot_load_persisted_s']} s from the persisted copy "
                f"(same results: {result['scale_persisted_same_results']})"
            )
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
