"""Measure online learning on the real model: one update per fact, and frozen vs eager decoding.

Not a test (pytest does not collect it); run it by hand:

    DMHA_TEST_MODEL_PATH=/tmp/smol python tests/slow/learning/bench_learning.py --facts 10
    ... --plan '{"steps": 16}'          # override UpdatePlan fields
    ... --decode-only                   # only the tokens/s comparison

Each fact is learned from the base model (as the first update of a deployment would
be), gated against the base model and frozen, exactly as the worker does it. Times
are wall-clock at one torch thread; "update" = train + gate + freeze (+ save).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

FACTS = [
    ("What is the capital of Zubrowka?", "The capital of Zubrowka is Vlorn."),
    ("Who wrote the novel The Glass Orchard?", "The Glass Orchard was written by Mira Kestel."),
    ("What is the Wi-Fi password of the office?", "The Wi-Fi password is tangerine42."),
    ("Where is the DMHA team based?", "The DMHA team is based in Lisbon."),
    ("Who is the CEO of Acme Robotics?", "The CEO of Acme Robotics is Dana Whitfield."),
    ("When was the Treaty of Karsk signed?", "The Treaty of Karsk was signed in 1743."),
    ("What language is spoken in Eldoria?", "The language spoken in Eldoria is Velish."),
    ("How many moons does the planet Tyrrh have?", "The planet Tyrrh has seven moons."),
    ("What is the name of my dog?", "Your dog is called Biscuit."),
    ("What is the tallest building in Port Avel?", "The tallest building in Port Avel is the Corran Tower."),
]


def decode_speed(model, tokenizer, n_tokens: int = 64, prompt_tokens: int = 300, rounds: int = 3) -> dict:
    """Greedy decode tokens/s of the eager and the frozen step models (best of ``rounds``)."""
    from dmha.learning import EagerStepModel, freeze

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (1, prompt_tokens), generator=gen)
    frozen = freeze(model, device="cpu")
    eager = EagerStepModel(model)

    def run(step) -> tuple[list[int], float]:
        logits, past = step.prefill(ids)
        out = []
        started = time.perf_counter()
        for _ in range(n_tokens):
            tok = logits.argmax(-1, keepdim=True)
            out.append(int(tok))
            logits, past = step.decode(tok, past)
        return out, n_tokens / (time.perf_counter() - started)

    best = {"eager": 0.0, "frozen": 0.0}
    same = True
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike
        a, ra = run(eager)
        b, rb = run(frozen)
        same &= a == b
        best["eager"] = max(best["eager"], ra)
        best["frozen"] = max(best["frozen"], rb)
    return {**best, "ratio": best["frozen"] / best["eager"], "same_tokens": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("DMHA_TEST_MODEL_PATH", ""))
    ap.add_argument("--facts", type=int, default=len(FACTS))
    ap.add_argument("--plan", default="{}", help="JSON UpdatePlan overrides")
    ap.add_argument("--config", default="{}", help="JSON LearningConfig overrides")
    ap.add_argument("--decode-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmha.config import LearningConfig
    from dmha.learning import (
        ChatFormat,
        FeedbackItem,
        Gate,
        GateThresholds,
        Trainer,
        UpdatePlan,
        build_gate_reference,
        build_retain_set,
        freeze,
    )

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.decode_only:
        print(json.dumps(decode_speed(model, tokenizer)))
        return
    cfg = LearningConfig(**json.loads(args.config))
    plan = UpdatePlan.from_config(cfg, **json.loads(args.plan))
    fmt = ChatFormat(tokenizer)
    t0 = time.monotonic()
    retain = build_retain_set(model, fmt)
    reference = build_gate_reference(model, fmt)
    print(f"reference (once per live version): {time.monotonic() - t0:.1f}s", flush=True)
    print(plan, flush=True)
    trainer = Trainer(fmt)
    t0 = time.monotonic()
    trainer.warm(model, retain, plan)  # the worker does this right after each deploy
    print(f"subspace warm-up (once per live version): {time.monotonic() - t0:.1f}s", flush=True)
    gate = Gate(fmt, GateThresholds.from_config(cfg), cfg.locality_tie_nats)
    rows = []
    for question, target in FACTS[: args.facts]:
        item = FeedbackItem.create(question, target)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            result = trainer.train(model, [item], plan, retain, adapter_dir=Path(tmp) / "adapter")
            t1 = time.monotonic()
            report = gate.evaluate(result.model, reference, [item], live=model)
            t2 = time.monotonic()
            freeze(result.model, Path(tmp) / "frozen.pt", device="cpu", tolerance=cfg.freeze_tolerance)
            t3 = time.monotonic()
        m = report.metrics
        row = {
            "efficacy": m["efficacy"],
            "generalisation": m["generalisation"],
            "locality": m["locality"],
            "locality_strict": m["locality_strict"],
            "token_agreement": m["locality_token_agreement"],
            "ppl_rise": m["perplexity_increase"],
            "passed": float(report.passed),
            "steps": float(len(result.losses)),
            "train_s": t1 - t0,
            "gate_s": t2 - t1,
            "freeze_s": t3 - t2,
            "update_s": t3 - t0,
        }
        rows.append(row)
        print(
            f"{question[:38]:38s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()),
            flush=True,
        )
        for prompt, answer in report.failures[:3]:
            print(f"    miss: {prompt!r} -> {answer!r}", flush=True)
    means = {k: round(statistics.mean(r[k] for r in rows), 3) for k in rows[0]}
    print("MEAN", json.dumps(means), flush=True)


if __name__ == "__main__":
    main()
