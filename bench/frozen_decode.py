"""Frozen vs eager decoding through the serving batcher, at 1 and 8 concurrent streams.

Loads a model version (default: the real default model), freezes it with
``dmha.learning.freezing.freeze`` and drives the scheduler's cohorts
(``dmha.llm.batching.make_cohorts``) over chat prompts of different lengths, once with
the eager weights and once with the frozen module, alternating which goes first in
each round so both see the same machine load. Each stream generates exactly
``--tokens`` tokens (end-of-sequence ignored), so both do the same work. Reported per
stream count: the first step's time (prefill, first token, first decode) and decode
tokens/s over the remaining steps (all streams together), as medians over rounds, and
the median of the per-round frozen/eager ratios; also "frozen one by one", the frozen
module with one cohort per request (how frozen versions were scheduled before they
batched). Prints a table and one final JSON line.

    python bench/frozen_decode.py [--streams 1 8] [--tokens 48] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Questions of different lengths: a batch of them is left-padded.
QUESTIONS = [
    "Tell me a story about the sea.",
    "What is the capital of France?",
    "Explain in simple words how a bicycle stays upright while it is moving.",
    "Write a short poem about autumn leaves.",
    "Give me three tips for learning a new language quickly, with an example for each.",
    "Why is the sky blue?",
    "Describe a day in the life of a lighthouse keeper on a remote island in winter.",
    "List some healthy breakfast ideas.",
]


def chat_prompts(handle: Any, streams: int) -> list[list[int]]:
    """The first ``streams`` questions rendered with the default system prompt."""
    from dmha.config import ModelConfig
    from dmha.llm.engine import render_chat

    system = ModelConfig().system_prompt
    return [render_chat(handle.tokenizer, [("system", system), ("user", q)]) for q in QUESTIONS[:streams]]


async def _drive(handle: Any, prompts: list[list[int]], tokens: int, one_by_one: bool) -> dict[str, Any]:
    from dmha.llm.base import GenerationOptions, GenerationResult
    from dmha.llm.batching import Request, SingleCohort, make_cohorts

    loop = asyncio.get_running_loop()
    reqs = [Request(handle, ids, GenerationOptions(max_new_tokens=tokens), loop, asyncio.Queue()) for ids in prompts]
    device = getattr(handle.step_model, "device", "cpu")
    # The scheduler's loop (dmha.llm.engine.HFEngine._run) with every request admitted at once.
    cohorts: list[Any] = [SingleCohort(r, device) for r in reqs] if one_by_one else make_cohorts(reqs)
    t0 = time.perf_counter()
    for cohort in cohorts:
        cohort.step()  # prefill, first token, first decode step
    t1 = time.perf_counter()
    while cohorts := [c for c in cohorts if c.requests]:
        for cohort in cohorts:
            cohort.step()
    t2 = time.perf_counter()
    await asyncio.sleep(0)  # deliver the results the cohorts sent
    outs = []
    for req in reqs:
        items = [req.out.get_nowait() for _ in range(req.out.qsize())]
        if not isinstance(items[-1], GenerationResult):
            raise RuntimeError(f"generation failed: {items[-1]!r}")
        outs.append(req.ids)
    # After the first step, each stream takes tokens - 2 more decode steps (the last
    # token is sampled from the previous step's logits and fed to no model call).
    return {"first_step_s": t1 - t0, "decode_tok_s": len(prompts) * (tokens - 2) / (t2 - t1), "ids": outs}


def run(handle: Any, prompts: list[list[int]], tokens: int, one_by_one: bool = False) -> dict[str, Any]:
    """Generate ``tokens`` tokens for every prompt at once; timings and the token ids."""
    # No end-of-sequence: every stream does the same work whatever it generates.
    fixed = dataclasses.replace(handle, eos_token_ids=frozenset())
    return asyncio.run(_drive(fixed, prompts, tokens, one_by_one))


def compare(
    eager: Any, frozen: Any, streams: list[int], tokens: int, rounds: int, one_by_one: bool = True
) -> dict[str, Any]:
    """Frozen vs eager through the batcher, ratios measured round by round in this process.

    Args:
        eager: an eager :class:`~dmha.llm.base.ModelHandle`.
        frozen: the same version's handle with the frozen step model.
        streams: concurrent stream counts to measure.
        tokens: tokens generated per stream.
        rounds: rounds per stream count (the order of eager and frozen alternates).
        one_by_one: also measure the frozen module with one cohort per request.

    Returns:
        Per stream count: medians of the first step's seconds (prefill, first token,
        first decode) and of decode tokens/s, the median
        frozen/eager decode ratio, and how many streams produced the same tokens.
    """
    out: dict[str, Any] = {}
    for n in streams:
        prompts = chat_prompts(eager, n)
        variants = {"eager": eager, "frozen": frozen}
        res: dict[str, list[dict[str, Any]]] = {k: [] for k in [*variants, "frozen_one_by_one"]}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                res[name].append(run(variants[name], prompts, tokens))
            if one_by_one and n > 1:
                res["frozen_one_by_one"].append(run(frozen, prompts, tokens, one_by_one=True))
        ratios = [f["decode_tok_s"] / e["decode_tok_s"] for f, e in zip(res["frozen"], res["eager"], strict=True)]
        same = sum(a == b for a, b in zip(res["eager"][0]["ids"], res["frozen"][0]["ids"], strict=True))
        row: dict[str, Any] = {
            "prompt_tokens": [len(p) for p in prompts],
            "frozen_vs_eager_decode": statistics.median(ratios),
            "frozen_vs_eager_decode_per_round": [round(x, 3) for x in ratios],
            "same_tokens_streams": f"{same}/{n}",
        }
        for name, runs in res.items():
            if runs:
                row[name] = {
                    "first_step_s": statistics.median(x["first_step_s"] for x in runs),
                    "decode_tok_s": statistics.median(x["decode_tok_s"] for x in runs),
                }
        if res["frozen_one_by_one"]:
            row["frozen_batched_vs_one_by_one"] = statistics.median(
                f["decode_tok_s"] / s["decode_tok_s"]
                for f, s in zip(res["frozen"], res["frozen_one_by_one"], strict=True)
            )
        out[f"streams_{n}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the default model)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per stream (>= 3)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from dmha.config import ModelConfig, default_data_dir
    from dmha.learning.freezing import freeze
    from dmha.llm.engine import load_eager_handle
    from dmha.llm.model_store import ensure_model

    torch.set_num_threads(1)
    model_dir = args.model or ensure_model(None, default_data_dir())
    eager = load_eager_handle(model_dir, ModelConfig(device="cpu"))
    started = time.perf_counter()
    frozen_step = freeze(eager.torch_model, device="cpu")
    freeze_s = time.perf_counter() - started
    frozen = dataclasses.replace(eager, step_model=frozen_step, kind="frozen")
    result = compare(eager, frozen, args.streams, args.tokens, args.rounds)
    print(f"{'streams':>8} {'eager tok/s':>12} {'frozen tok/s':>13} {'frozen/eager':>13} {'one-by-one tok/s':>17}")
    for n in args.streams:
        row = result[f"streams_{n}"]
        single = row.get("frozen_one_by_one", {}).get("decode_tok_s")
        print(
            f"{n:>8} {row['eager']['decode_tok_s']:>12.1f} {row['frozen']['decode_tok_s']:>13.1f} "
            f"{row['frozen_vs_eager_decode']:>12.2f}x {'' if single is None else f'{single:.1f}':>17}"
        )
    summary = {
        "bench": "frozen_decode",
        "machine": f"{os.cpu_count()} cores, CPU, torch threads {torch.get_num_threads()}",
        "model": model_dir.name,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "freeze_s": freeze_s,
        **result,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
