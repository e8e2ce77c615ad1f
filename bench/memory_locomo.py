"""Long-term memory benchmark: LoCoMo retrieval recall, ingest throughput, scale latency.

Recall: each conversation is ingested turn by turn, in order, as one user's history
through the server's code path -- working memory in a real embedded Redis, archival
on overflow and at session end, the Milvus Lite store, clustering when due -- then
every QA item is searched and recall@k of its evidence turns (``dia_id``) is
measured, three ways for DMHA:

- ``dmha``: a summary covers the turns it links to (the task's definition);
- ``dmha_quoted``: a turn counts only when the results carry its words -- returned
  verbatim, or 80 % of its content words quoted by a returned summary;
- ``dmha_turn_only``: only turns returned verbatim count.

Two baselines run on the same turns in the same run: dense-only MiniLM top-k and
BM25 (rank-bm25, plain word tokens). ``mean_tokens`` (~4 bytes per token) shows what
each system's top-k costs in prompt space, since a summary is longer than a turn.

Scale: one synthetic user with ``--scale`` memories (default 100k). Their texts are
random sentences over a generated topic vocabulary and their vectors are synthetic
(normalised sums of fixed random word vectors, so topics form clusters) inserted
straight into Milvus: embedding 100k texts with MiniLM takes ~7 minutes on 2 cores.
Queries are embedded by the real MiniLM, so latency is end to end (embedding
included) even though relevance there is meaningless.

Usage (from the repository root)::

    python bench/memory_locomo.py                       # everything
    python bench/memory_locomo.py --summariser none     # ablation: no summaries
    python bench/memory_locomo.py --scale 0             # recall only

The data set stays outside the repository (license: evaluation only).
Prints a table, then ONE final JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_DIA = re.compile(r"D\d+:\d+")
_WORDS = re.compile(r"\w+")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "../shared/bench-data/locomo/locomo-dev.json",
        help="LoCoMo-layout JSON (default: ../shared/bench-data/locomo/locomo-dev.json)",
    )
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="cut-offs for recall@k")
    p.add_argument(
        "--summariser",
        choices=["extractive", "none"],
        default="extractive",
        help="summary records for archived batches (none = turns only)",
    )
    p.add_argument("--conversations", type=int, default=0, help="use only the first N (0 = all)")
    p.add_argument("--scale", type=int, default=100_000, help="memories of the scale test (0 = skip)")
    p.add_argument("--queries", type=int, default=200, help="searches timed in the scale test")
    p.add_argument("--threads", type=int, default=1, help="torch / Faiss threads")
    p.add_argument("--data-dir", type=Path, default=None, help="working dir (default: a temp dir)")
    return p.parse_args(argv)


# -- LoCoMo ---------------------------------------------------------------------------


def session_date(raw: str | None) -> float | None:
    """'1:56 pm on 8 May, 2023' -> epoch seconds (UTC); None when absent or unparsable."""
    if not raw:
        return None
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B %Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(raw.strip(), fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def conversation_turns(conv: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    """``(session_id, created_at, dia_id, text)`` for every turn, in order."""
    numbers = sorted(int(m.group(1)) for key in conv if (m := re.fullmatch(r"session_(\d+)", key)))
    out: list[tuple[str, float, str, str]] = []
    clock = 1_600_000_000.0
    for n in numbers:
        base = session_date(conv.get(f"session_{n}_date_time"))
        clock = base if base is not None and base > clock else clock + 3600
        for i, turn in enumerate(conv[f"session_{n}"]):
            text = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            out.append((f"session_{n}", clock + 30 * i, turn["dia_id"], text))
        clock += 30 * len(conv[f"session_{n}"])
    return out


def evidence_ids(item: dict[str, Any], known: set[str]) -> set[str]:
    found: set[str] = set()
    for ev in item.get("evidence") or []:
        found.update(d for d in _DIA.findall(str(ev)) if d in known)
    return found


# -- the system under test -------------------------------------------------------------


def ingest(ltm: Any, wm: Any, user: str, turns: list[tuple[str, float, str, str]]) -> dict[str, Any]:
    from dmha.turn import Turn, new_turn_id

    dia_of: dict[str, str] = {}
    text_of: dict[str, str] = {}
    reclusters = 0
    current: str | None = None
    for session_id, created_at, dia_id, text in turns:
        if current is not None and session_id != current:
            ltm.archive_session(user, current)
        current = session_id
        turn = Turn(new_turn_id(), user, session_id, "user", text, created_at)
        dia_of[turn.turn_id] = dia_id
        text_of[turn.turn_id] = text
        wm.append([turn])
        report = ltm.archive_overflow(user, session_id)
        if report.recluster_due:
            ltm.recluster(user)
            reclusters += 1
    if current is not None:
        ltm.archive_session(user, current)
    final = ltm.recluster(user)
    return {"dia_of": dia_of, "text_of": text_of, "reclusters": reclusters + 1, "clusters": final.clusters}


def recall(covered: set[str], evidence: set[str]) -> float:
    return len(covered & evidence) / len(evidence)


def quoted(results: Sequence[Any], dia_of: dict[str, str], words_of: dict[str, set[str]]) -> set[str]:
    """Turns whose words the results actually carry: returned verbatim, or 80 % quoted by a summary."""
    from dmha.memory.bm25 import tokenize

    out: set[str] = set()
    for r in results:
        held = set(tokenize(r.text))
        for s in r.source_ids:
            if s in dia_of and (r.kind == "turn" or len(words_of[s] & held) >= 0.8 * len(words_of[s])):
                out.add(dia_of[s])
    return out


class Tally:
    def __init__(self) -> None:
        self.sums: dict[tuple[str, str, int], float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, system: str, category: str, k: int, value: float) -> None:
        for cat in (category, "overall"):
            self.sums[(system, cat, k)] += value

    def count(self, category: str) -> None:
        self.counts[category] += 1
        self.counts["overall"] += 1

    def mean(self, system: str, category: str, k: int) -> float:
        n = self.counts[category]
        return self.sums[(system, category, k)] / n if n else 0.0


def run_recall(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss
    from rank_bm25 import BM25Okapi

    from dmha.config import MemoryConfig, RedisConfig
    from dmha.memory import (
        RedisWorkingMemory,
        SentenceTransformerEmbedder,
        build_longterm,
    )
    from dmha.memory.bm25 import tokenize
    from dmha.memory.retrieval import approx_token_count
    from dmha.redis_connection import RedisConnection

    data = json.loads(args.data.read_text(encoding="utf-8"))
    if args.conversations:
        data = data[: args.conversations]
    cfg = MemoryConfig()
    conn = RedisConnection(RedisConfig(), work)
    wm = RedisWorkingMemory(conn, cfg.working)
    embedder = SentenceTransformerEmbedder(cfg.embedding)
    embedder.embed(["warm up"])  # model load is not ingest time
    ltm = build_longterm(cfg, work, working=wm, embedder=embedder, summaries=args.summariser != "none")
    ks = sorted(set(args.k))
    kmax = max(ks)
    tally = Tally()
    total_turns = 0
    ingest_seconds = 0.0
    skipped = 0
    search_ms: list[float] = []
    memories = 0
    tokens: dict[str, dict[int, int]] = {s: dict.fromkeys(ks, 0) for s in ("dmha", "dense_only", "bm25")}
    try:
        for conv_index, sample in enumerate(data):
            user = f"locomo-{sample.get('sample_id', conv_index)}"
            turns = conversation_turns(sample["conversation"])
            start = time.perf_counter()
            info = ingest(ltm, wm, user, turns)
            ingest_seconds += time.perf_counter() - start
            total_turns += len(turns)
            memories += ltm.stats(user).total
            dia_of = info["dia_of"]
            known = {t[2] for t in turns}
            words_of = {tid: set(tokenize(text)) for tid, text in info["text_of"].items()}
            # Baselines over the raw turns (the same "speaker: text" strings).
            raw = [t[3] for t in turns]
            raw_dia = [t[2] for t in turns]
            flat = faiss.IndexFlatIP(embedder.dim)
            flat.add(embedder.embed(raw))
            bm25 = BM25Okapi([_WORDS.findall(t.lower()) or ["_"] for t in raw])
            items = [(q, evidence_ids(q, known)) for q in sample["qa"]]
            skipped += sum(1 for _, ev in items if not ev)
            items = [(q, ev) for q, ev in items if ev]
            qvecs = embedder.embed([q["question"] for q, _ in items])
            _, dense_top = flat.search(qvecs, kmax)
            for (item, ev), dtop in zip(items, dense_top, strict=True):
                cat = CATEGORY_NAMES.get(item.get("category"), str(item.get("category")))
                tally.count(cat)
                t0 = time.perf_counter()
                results = ltm.search(user, item["question"], kmax)
                search_ms.append((time.perf_counter() - t0) * 1000)
                scores = bm25.get_scores(_WORDS.findall(item["question"].lower()))
                btop = np.argsort(-scores, kind="stable")[:kmax]
                for k in ks:
                    top = results[:k]
                    cov = {dia_of[s] for r in top for s in r.source_ids if s in dia_of}
                    turn_cov = {dia_of[s] for r in top if r.kind == "turn" for s in r.source_ids if s in dia_of}
                    tally.add("dmha", cat, k, recall(cov, ev))
                    tally.add("dmha_quoted", cat, k, recall(quoted(top, dia_of, words_of), ev))
                    tally.add("dmha_turn_only", cat, k, recall(turn_cov, ev))
                    tally.add("dense_only", cat, k, recall({raw_dia[i] for i in dtop[:k]}, ev))
                    tally.add("bm25", cat, k, recall({raw_dia[i] for i in btop[:k]}, ev))
                    tokens["dmha"][k] += sum(approx_token_count(r.text) for r in top)
                    tokens["dense_only"][k] += sum(approx_token_count(raw[i]) for i in dtop[:k])
                    tokens["bm25"][k] += sum(approx_token_count(raw[i]) for i in btop[:k])
            print(f"  {user}: {len(turns)} turns, {len(items)} questions, {info['clusters']} clusters", file=sys.stderr)
    finally:
        ltm.close()
        conn.close()
    cats = [c for c in list(CATEGORY_NAMES.values()) + sorted(tally.counts) if c in tally.counts]
    cats = list(dict.fromkeys(c for c in cats if c != "overall")) + ["overall"]
    systems = ["dmha", "dmha_quoted", "dmha_turn_only", "dense_only", "bm25"]
    table = {s: {c: {f"@{k}": round(tally.mean(s, c, k), 4) for k in ks} for c in cats} for s in systems}
    search_arr = np.array(search_ms)
    return {
        "conversations": len(data),
        "turns": total_turns,
        "memories": memories,
        "questions": tally.counts["overall"],
        "questions_without_evidence": skipped,
        "questions_per_category": {c: tally.counts[c] for c in cats},
        "summariser": args.summariser,
        "recall": table,
        "mean_tokens": {
            s: {f"@{k}": round(v / max(1, tally.counts["overall"]), 1) for k, v in by_k.items()}
            for s, by_k in tokens.items()
        },
        "ingest_turns_per_s": round(total_turns / ingest_seconds, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "locomo_search_ms_p50": round(float(np.percentile(search_arr, 50)), 2),
        "locomo_search_ms_p95": round(float(np.percentile(search_arr, 95)), 2),
    }


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


def synthetic(n: int, dim: int, words_in: list[str], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random topical sentences and bag-of-random-word-vector embeddings (topics cluster)."""
    rng = np.random.default_rng(seed)
    words = np.array(words_in)
    wvec = rng.standard_normal((len(words), dim)).astype(np.float32)
    topics = [rng.choice(len(words), size=12, replace=False) for _ in range(300)]
    texts: list[str] = []
    vectors = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        topic = topics[rng.integers(len(topics))]
        length = int(rng.integers(8, 15))
        pick = np.where(rng.random(length) < 0.7, rng.choice(topic, size=length), rng.integers(len(words), size=length))
        texts.append(" ".join(words[pick]))
        vectors[i] = wvec[pick].sum(axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


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
    from dmha.config import MemoryConfig
    from dmha.memory import (
        MemoryRecord,
        SentenceTransformerEmbedder,
        build_longterm,
        memory_id,
    )
    from dmha.memory.clustering import Clusterer

    cfg = MemoryConfig()
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
        texts, vectors = synthetic(n, embedder.dim, word_list(embedder.path))
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
            ltm.store.upsert(recs)
        out["scale_insert_rows_per_s"] = round(n / (time.perf_counter() - t0), 1)
        t0 = time.perf_counter()
        ltm.warm([user])  # the hot index is rebuilt from Milvus, as on a cold start
        out["scale_hot_load_s"] = round(time.perf_counter() - t0, 2)
        rng = np.random.default_rng(1)
        queries = [" ".join(texts[int(i)].split()[:6]) for i in rng.integers(n, size=args.queries)]
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
        report = ltm.recluster(user)  # fit + cluster ids written back + cluster summaries
        out["scale_recluster_job_s"] = round(report.seconds, 2)
        again = ltm.recluster(user)  # ids are stable: only changed memberships are written
        out["scale_recluster_again_s"] = round(again.seconds, 2)
    finally:
        ltm.close()
    return out


def print_table(res: dict[str, Any]) -> None:
    ks = list(next(iter(next(iter(res["recall"].values())).values())).keys())
    cats = list(res["questions_per_category"])
    head = f"{'system':<16}{'category':<13}{'n':>5} " + " ".join(f"{'R' + k:>8}" for k in ks)
    print(head)
    print("-" * len(head))
    for system, by_cat in res["recall"].items():
        for cat in cats:
            vals = " ".join(f"{by_cat[cat][k]:>8.3f}" for k in ks)
            print(f"{system:<16}{cat:<13}{res['questions_per_category'][cat]:>5} {vals}")
        print()


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
            print_table(result)
            print("mean tokens of the top-k:", json.dumps(result["mean_tokens"]))
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
                f"{result['scale_recluster_job_s']} s (first, writes 100k ids), "
                f"{result['scale_recluster_again_s']} s (rerun); hot index load "
                f"{result['scale_hot_load_s']} s"
            )
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
