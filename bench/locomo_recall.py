"""The recall half of the LoCoMo memory benchmark (run by ``bench/memory_locomo.py``).

LoCoMo parsing, ingest through the server's path, the retrieval variants of the
ablation and the leave-one-out grid, and the recall tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from locomo_eval import (
    CachedEmbedder,
    CachedSummariser,
    Tally,
    carried,
    leave_one_out,
    pack_ranking,
    served_token_counter,
)

CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_DIA = re.compile(r"D\d+:\d+")
_WORDS = re.compile(r"\w+")


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
    from dmha.memory.bm25 import tokenize

    words_of = {tid: set(tokenize(text)) for tid, text in text_of.items()}
    return {"dia_of": dia_of, "words_of": words_of, "reclusters": reclusters + 1, "clusters": final.clusters}


# -- variants ---------------------------------------------------------------------------

ALL_KINDS = ["turn", "summary", "cluster_summary", "fact"]
BEFORE = {
    "fusion": "rrf",
    "weight_dense": 1.0,
    "weight_lexical": 1.5,
    "lexical_context": False,
    "prompt_kinds": ALL_KINDS,
}
"""The retrieval of issue 3 (RRF with its weights, every kind), for the ablation and the latency ratio."""

ABLATION: list[tuple[str, dict[str, Any]]] = [
    ("before: RRF of dense, BM25, recency, context (issue 3)", BEFORE),
    (
        "z-score fusion of dense and BM25",
        {"lexical_context": False, "neighbour_weights": [], "prompt_kinds": ALL_KINDS},
    ),
    ("+ BM25 reads each turn with the turn before", {"neighbour_weights": [], "prompt_kinds": ALL_KINDS}),
    ("+ neighbours at distance 1 (0.5)", {"neighbour_weights": [0.5], "prompt_kinds": ALL_KINDS}),
    ("+ neighbours at distance 2 (0.35)", {"prompt_kinds": ALL_KINDS}),
    ("+ summaries left out of the prompt = default", {}),
]
DEFAULT_ROW = ABLATION[-1][0]


def loo_grid(name: str = "fusion") -> list[tuple[str, dict[str, Any]]]:
    """The configurations leave-one-out chooses among (simplest first: ties go to them).

    Which kinds the prompt draws from is settled by the ablation, not here (each
    extra dimension doubles the searches of a run).

    Args:
        name: ``fusion`` (issue 12: fusion, weights, neighbours, BM25 context) or
            ``session-cap`` (the defaults and dense 0.5, each with a per-session cap
            of 0 / 2 / 3 / 4 turns), or ``depth`` (dense 0.4 / 0.5 x candidates per
            signal 100 / 200 x neighbours up to distance 2 / 3).
    """
    if name == "depth":
        return [
            (
                f"dense {dense}, candidates {depth}, neighbours {weights}",
                {
                    "weight_dense": dense,
                    "weight_lexical": round(1 - dense, 2),
                    "candidates": depth,
                    "neighbour_weights": weights,
                },
            )
            for weights in ([0.5, 0.35], [0.5, 0.35, 0.2])
            for depth in (100, 200)
            for dense in (0.4, 0.5)
        ]
    if name == "session-cap":
        return [
            (
                f"dense {dense}, session cap {cap or '-'}",
                {"weight_dense": dense, "weight_lexical": round(1 - dense, 2), "session_cap": cap},
            )
            for cap in (0, 2, 3, 4)
            for dense in (0.4, 0.5)
        ]
    out: list[tuple[str, dict[str, Any]]] = [("rrf (issue 3)", BEFORE)]
    for context in (False, True):
        for weights in ([], [0.5], [0.5, 0.35]):
            for dense in (0.3, 0.4, 0.5, 0.6, 0.7):
                name = f"dense {dense}, neighbours {weights or '-'}, BM25 context {'on' if context else 'off'}"
                over = {
                    "weight_dense": dense,
                    "weight_lexical": round(1 - dense, 2),
                    "neighbour_weights": weights,
                    "lexical_context": context,
                }
                out.append((name, over))
    return out


def served_summariser() -> str:
    """What the default config archives with: the LLM summariser or the extractive one."""
    from dmha.config import MemoryConfig

    return "llm" if MemoryConfig().longterm.summarise else "extractive"


def served_prompt_kinds() -> list[str]:
    """The memory kinds the chat prompt draws from by default."""
    from dmha.config import MemoryConfig

    return list(MemoryConfig().retrieval.prompt_kinds)


def llm_summariser() -> tuple[Any, Any]:
    """The server's LLM summariser over the default model, with its event loop thread."""
    import asyncio
    import threading

    from dmha.config import load_config
    from dmha.llm.engine import HFEngine, load_eager_handle
    from dmha.llm.model_store import ensure_model
    from dmha.memory.summariser import LLMSummariser

    cfg = load_config()
    handle = load_eager_handle(ensure_model(cfg.model.path, cfg.data_dir), cfg.model)
    llm = HFEngine(handle, cfg.limits, 1)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True).start()

    def close() -> None:
        llm.close()
        loop.call_soon_threadsafe(loop.stop)

    return LLMSummariser(llm, loop), close


# -- recall -----------------------------------------------------------------------------


def _summarisers(names: list[str], cache: Path) -> tuple[dict[str, Any], list[Any]]:
    from dmha.memory.summariser import ExtractiveSummariser

    out: dict[str, Any] = {}
    closers: list[Any] = []
    for name in names:
        if name == "none":
            out[name] = None
        elif name == "extractive":
            out[name] = ExtractiveSummariser()
        else:
            inner, close = llm_summariser()
            closers.append(close)
            out[name] = CachedSummariser(inner, "llm:SmolLM2-135M-Instruct", cache / "summaries-llm.jsonl")
    return out, closers


def run_recall(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss
    from rank_bm25 import BM25Okapi

    from dmha.config import MemoryConfig, RedisConfig, RetrievalConfig
    from dmha.llm.model_store import default_model_dir
    from dmha.memory import LongTermMemory, RedisWorkingMemory, SentenceTransformerEmbedder
    from dmha.memory.store import MilvusLongTermStore
    from dmha.redis_connection import RedisConnection

    data = json.loads(args.data.read_text(encoding="utf-8"))
    if args.only:
        data = [s for s in data if s.get("sample_id") in set(args.only)]
    if args.conversations:
        data = data[: args.conversations]
    names = list(dict.fromkeys(served_summariser() if n == "served" else n for n in args.summariser))
    cfg = MemoryConfig()
    from dmha.config import load_config

    count, counter_name = served_token_counter(default_model_dir(load_config().data_dir))
    conn = RedisConnection(RedisConfig(), work)
    wm = RedisWorkingMemory(conn, cfg.working)
    embedder = CachedEmbedder(SentenceTransformerEmbedder(cfg.embedding), args.cache_dir / "embeddings.npz")
    summarisers, closers = _summarisers(names, args.cache_dir)
    store = MilvusLongTermStore(cfg.longterm, work, embedder.dim)
    writers = {
        n: LongTermMemory(cfg, store, embedder, working=wm, summariser=summarisers[n], count_tokens=count)
        for n in names
    }
    variants = list(ABLATION) if args.ablation else []
    grid = loo_grid(args.loo_grid) if args.loo else []
    readers: dict[str, LongTermMemory] = {}
    for name, over in variants + grid:
        variant_cfg = cfg.model_copy(update={"retrieval": RetrievalConfig(**over)})
        readers.setdefault(name, LongTermMemory(variant_cfg, store, embedder))
    # What the chat prompt draws from (MemoryHook passes the same kinds).
    prompt_kinds = args.prompt_kinds or cfg.retrieval.prompt_kinds
    roles = cfg.retrieval.prompt_roles  # LoCoMo's turns are all ingested as the user's
    kinds_of = {name: RetrievalConfig(**over).prompt_kinds for name, over in variants + grid}
    ks, budgets = sorted(set(args.k)), sorted(set(args.budgets))
    kmax, max_k = max(ks), cfg.retrieval.max_k
    tally = Tally()
    tokens: dict[str, dict[str, float]] = {}
    search_ms: dict[str, list[float]] = {}
    objective: dict[str, dict[str, list[float]]] = {name: {} for name, _ in grid}
    total_turns = skipped = memories = 0
    ingest_seconds = 0.0

    def spend(system: str, cut: str, n: float) -> None:
        tokens.setdefault(system, {}).setdefault(cut, 0.0)
        tokens[system][cut] += n

    def timed(system: str, fn: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        search_ms.setdefault(system, []).append((time.perf_counter() - t0) * 1000)
        return out

    try:
        for conv_index, sample in enumerate(data):
            sid = str(sample.get("sample_id", conv_index))
            turns = conversation_turns(sample["conversation"])
            known = {t[2] for t in turns}
            users: dict[str, tuple[str, dict[str, Any]]] = {}
            for n in names:
                user = f"locomo-{sid}-{n}"
                store.delete_where(user)  # a --data-dir reused across runs starts clean
                start = time.perf_counter()
                info = ingest(writers[n], wm, user, turns)
                if n == names[0]:
                    ingest_seconds += time.perf_counter() - start
                    memories += writers[n].stats(user).total
                users[n] = (user, info)
                embedder.save()
            total_turns += len(turns)
            raw = [t[3] for t in turns]
            raw_dia = [t[2] for t in turns]
            costs = [count(t) for t in raw]
            flat = faiss.IndexFlatIP(embedder.dim)
            flat.add(embedder.embed(raw))
            bm25 = BM25Okapi([_WORDS.findall(t.lower()) or ["_"] for t in raw])
            items = [(q, evidence_ids(q, known)) for q in sample["qa"]]
            skipped += sum(1 for _, ev in items if not ev)
            items = [(q, ev) for q, ev in items if ev]
            qvecs = embedder.embed([q["question"] for q, _ in items])
            _, dense_all = flat.search(qvecs, len(raw))
            for (item, ev), dtop in zip(items, dense_all, strict=True):
                cat = CATEGORY_NAMES.get(item.get("category"), str(item.get("category")))
                question = item["question"]
                tally.count(cat)
                btop = np.argsort(-bm25.get_scores(_WORDS.findall(question.lower())), kind="stable")
                for system, order in (("dense_only", dtop.tolist()), ("bm25", btop.tolist())):
                    for k in ks:
                        tally.add(system, cat, f"@{k}", len({raw_dia[i] for i in order[:k]} & ev) / len(ev))
                        spend(system, f"@{k}", sum(costs[i] for i in order[:k]))
                    for b in budgets:
                        chosen = pack_ranking(order, costs, b)
                        value = len({raw_dia[i] for i in chosen} & ev) / len(ev)
                        tally.add(system, cat, f"B{b}", value)
                        tally.add(system, cat, f"B{b}g", value)
                        spend(system, f"B{b}", sum(costs[i] for i in chosen))
                for n in names:
                    user, info = users[n]
                    dia_of, words_of = info["dia_of"], info["words_of"]
                    system = "dmha" if n == names[0] else f"dmha[{n}]"
                    top = timed(system, writers[n].search, user, question, kmax, kinds=prompt_kinds, roles=roles)
                    for k in ks:
                        generous, strict = carried(top[:k], dia_of, words_of)
                        verbatim = {dia_of[s] for r in top[:k] if r.kind == "turn" for s in r.source_ids if s in dia_of}
                        tally.add(system, cat, f"@{k}", len(generous & ev) / len(ev))
                        tally.add(system + "_quoted", cat, f"@{k}", len(strict & ev) / len(ev))
                        tally.add(system + "_turn_only", cat, f"@{k}", len(verbatim & ev) / len(ev))
                        spend(system, f"@{k}", sum(count(r.text) for r in top[:k]))
                    for b in budgets:
                        got = writers[n].search(user, question, max_k, b, kinds=prompt_kinds, roles=roles)
                        generous, strict = carried(got, dia_of, words_of)
                        tally.add(system, cat, f"B{b}", len(strict & ev) / len(ev))
                        tally.add(system, cat, f"B{b}g", len(generous & ev) / len(ev))
                        spend(system, f"B{b}", sum(count(r.text) for r in got))
                user, info = users[names[0]]
                for name, _ in variants:
                    got = timed(name, readers[name].search, user, question, max_k, kinds=kinds_of[name])
                    _variant_figures(tally, name, cat, got, ev, info, ks, budgets, count)
                for name, _ in grid:
                    got = timed(name, readers[name].search, user, question, max_k, kinds=kinds_of[name])
                    values = _variant_figures(tally, name, cat, got, ev, info, ks, budgets, count)
                    objective[name].setdefault(sid, []).append(float(np.mean(values)))
            clusters = users[names[0]][1]["clusters"]
            print(f"  {sid}: {len(turns)} turns, {len(items)} questions, {clusters} clusters", file=sys.stderr)
    finally:
        embedder.save()
        for close in closers:
            close()
        store.close()
        conn.close()
    return _recall_result(
        args,
        data,
        names,
        tally,
        tokens,
        search_ms,
        objective,
        variants,
        grid,
        ks,
        budgets,
        total_turns,
        memories,
        skipped,
        ingest_seconds,
        counter_name,
        summarisers,
    )


def _variant_figures(
    tally: Any,
    name: str,
    cat: str,
    got: Sequence[Any],
    ev: set[str],
    info: dict[str, Any],
    ks: Sequence[int],
    budgets: Sequence[int],
    count: Any,
) -> list[float]:
    """Strict recall@k and at each budget (packing the unbudgeted order) of one variant."""
    dia_of, words_of = info["dia_of"], info["words_of"]
    for k in ks:
        tally.add(name, cat, f"@{k}", len(carried(got[:k], dia_of, words_of)[1] & ev) / len(ev))
    costs = [count(r.text) for r in got]
    values = []
    for b in budgets:
        chosen = [got[i] for i in pack_ranking(range(len(got)), costs, b)]
        generous, strict = carried(chosen, dia_of, words_of)
        values.append(len(strict & ev) / len(ev))
        tally.add(name, cat, f"B{b}", values[-1])
        tally.add(name, cat, f"B{b}g", len(generous & ev) / len(ev))
    return values


def _p50(values: Sequence[float]) -> float:
    return round(float(np.percentile(values, 50)), 2) if values else 0.0


def _recall_result(
    args: argparse.Namespace,
    data: list[Any],
    names: list[str],
    tally: Any,
    tokens: dict[str, dict[str, float]],
    search_ms: dict[str, list[float]],
    objective: dict[str, dict[str, list[float]]],
    variants: list[tuple[str, dict[str, Any]]],
    grid: list[tuple[str, dict[str, Any]]],
    ks: list[int],
    budgets: list[int],
    total_turns: int,
    memories: int,
    skipped: int,
    ingest_seconds: float,
    counter_name: str,
    summarisers: dict[str, Any],
) -> dict[str, Any]:
    cats = [c for c in list(CATEGORY_NAMES.values()) + sorted(tally.counts) if c in tally.counts]
    cats = list(dict.fromkeys(c for c in cats if c != "overall")) + ["overall"]
    n_q = max(1, tally.counts["overall"])
    heads = ["dmha"] + [f"dmha[{n}]" for n in names[1:]]
    systems = [s for h in heads for s in (h, h + "_quoted", h + "_turn_only")] + ["dense_only", "bm25"]
    table = {s: {c: {f"@{k}": round(tally.mean(s, c, f"@{k}"), 4) for k in ks} for c in cats} for s in systems}
    at_budget: dict[str, Any] = {}
    by_category: dict[str, Any] = {}
    for s in heads + ["dense_only", "bm25"] + [v[0] for v in variants]:
        at_budget[s] = {
            str(b): {
                "strict": round(tally.mean(s, "overall", f"B{b}"), 4),
                "generous": round(tally.mean(s, "overall", f"B{b}g"), 4),
            }
            for b in budgets
        }
        by_category[s] = {c: {str(b): round(tally.mean(s, c, f"B{b}"), 4) for b in budgets} for c in cats}
    mean_tokens = {s: {cut: round(v / n_q, 1) for cut, v in by.items()} for s, by in tokens.items()}
    out: dict[str, Any] = {
        "conversations": len(data),
        "sample_ids": [str(s.get("sample_id")) for s in data],
        "turns": total_turns,
        "memories": memories,
        "questions": tally.counts["overall"],
        "questions_without_evidence": skipped,
        "questions_per_category": {c: tally.counts[c] for c in cats},
        "summariser": names[0],
        "prompt_kinds": list(args.prompt_kinds or served_prompt_kinds()),
        "summarisers": names,
        "token_counter": counter_name,
        "recall": table,
        "recall_at_budget": at_budget,
        "recall_at_budget_by_category": by_category,
        "mean_tokens": mean_tokens,
        "ingest_turns_per_s": round(total_turns / max(ingest_seconds, 1e-9), 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "locomo_search_ms_p50": _p50(search_ms.get("dmha", [])),
        "locomo_search_ms_p95": round(float(np.percentile(search_ms.get("dmha", [0.0]), 95)), 2),
    }
    for n, summ in summarisers.items():
        if hasattr(summ, "fresh"):
            out[f"summaries_{n}_new"] = summ.fresh
            out[f"summaries_{n}_seconds"] = round(summ.seconds, 1)
    if variants:
        out["ablation"] = {
            name: {
                **{f"@{k}": round(tally.mean(name, "overall", f"@{k}"), 4) for k in ks},
                **{str(b): round(tally.mean(name, "overall", f"B{b}"), 4) for b in budgets},
                "search_ms_p50": _p50(search_ms.get(name, [])),
            }
            for name, _ in variants
        }
        before, default = variants[0][0], DEFAULT_ROW
        if search_ms.get(before) and search_ms.get(default):
            out["search_latency_ratio_default_vs_before"] = round(
                _p50(search_ms[default]) / max(_p50(search_ms[before]), 1e-9), 2
            )
    if grid:
        out["grid_figures"] = {
            name: {
                **{f"@{k}": round(tally.mean(name, "overall", f"@{k}"), 4) for k in ks},
                **{str(b): round(tally.mean(name, "overall", f"B{b}"), 4) for b in budgets},
                "multi-hop @10": round(tally.mean(name, "multi-hop", "@10"), 4) if 10 in ks else None,
                "open-domain @10": round(tally.mean(name, "open-domain", "@10"), 4) if 10 in ks else None,
            }
            for name, _ in grid
        }
        loo = leave_one_out(objective)
        loo["objective"] = f"mean strict recall over budgets {budgets} (unbudgeted order packed greedily)"
        loo["grid"] = dict(grid)
        out["leave_one_out"] = loo
    return out


def print_recall(res: dict[str, Any]) -> None:
    budgets = list(res["recall_at_budget"]["dmha"])
    cats = list(res["questions_per_category"])
    print(f"tokens counted with the {res['token_counter']}; summariser: {res['summariser']}")
    head = f"{'strict recall at budget':<52}{'category':<13}{'n':>5} " + " ".join(f"{'B' + b:>7}" for b in budgets)
    print(head)
    print("-" * len(head))
    for system, by_cat in res["recall_at_budget_by_category"].items():
        for cat in cats:
            vals = " ".join(f"{by_cat[cat][b]:>7.3f}" for b in budgets)
            print(f"{system[:51]:<52}{cat:<13}{res['questions_per_category'][cat]:>5} {vals}")
        gen = " ".join(f"{res['recall_at_budget'][system][b]['generous']:>7.3f}" for b in budgets)
        print(f"{'':<52}{'(generous)':<13}{'':>5} {gen}")
        print()
    ks = list(next(iter(next(iter(res["recall"].values())).values())).keys())
    head = f"{'recall@k':<20}{'category':<13}{'n':>5} " + " ".join(f"{'R' + k:>8}" for k in ks)
    print(head)
    print("-" * len(head))
    for system, by_cat in res["recall"].items():
        for cat in cats:
            vals = " ".join(f"{by_cat[cat][k]:>8.3f}" for k in ks)
            print(f"{system:<20}{cat:<13}{res['questions_per_category'][cat]:>5} {vals}")
        print()
    print("mean tokens:", json.dumps(res["mean_tokens"]))
    if "ablation" in res:
        print("\nablation (overall strict):")
        for name, row in res["ablation"].items():
            print(f"  {name:<55} " + " ".join(f"{k}={v}" for k, v in row.items()))
    if "grid_figures" in res:
        print("\nleave-one-out grid, all five (overall strict):")
        for name, row in res["grid_figures"].items():
            print(f"  {name:<55} " + " ".join(f"{k}={v}" for k, v in row.items()))
    if "leave_one_out" in res:
        loo = res["leave_one_out"]
        print(f"\nleave-one-conversation-out ({loo['objective']}):")
        for f in loo["folds"]:
            print(
                f"  held out {f['held_out']}: chose [{f['chosen']}] train {f['train']} held-out {f['held_out_value']}"
            )
        print(
            f"  held-out mean {loo['held_out_mean']} (std {loo['held_out_std']}, "
            f"min {loo['held_out_min']}, max {loo['held_out_max']}); on all: [{loo['chosen_on_all']}] "
            f"{loo['chosen_on_all_in_sample']} in-sample"
        )
