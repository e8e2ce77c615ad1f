"""One correction from feedback to the gate's verdict, in process, as the worker runs it.

Loads the real default model and its learning references (``dmha setup``), computes
the edit space once (the worker keeps it per live version), then for each of
``--facts`` seeded fictitious facts (``dmha.report.reproducibility.make_facts``; pick
a seed no tuning run used) trains one edit from the base model with the default plan
(early stop on the margin, as served) and runs the gate against the base model. Per
fact: steps, seconds until the first step ended (copy, teachers, keys, gate
thresholds, one step), training wall and process-CPU seconds (CPU seconds hardly move with the
machine's load; wall seconds do), how many layers were gated, how many training
sequences no gate could reach (dropped), the gate's seconds and how many of its
locality probes it ran (the others no gate of the edit opens on: skipped, as the
worker does), verdict and figures. ``--learning-rate``, ``--gate-margin`` and
``--subspace-rank`` override the config to compare settings on the same facts;
``--compare-skip`` also runs the gate on every probe and reports its time and the
largest difference in any figure. Prints one line per fact and one final JSON line.

    python bench/edit_to_gate.py [--facts 4] [--seed 31415] [--learning-rate 0.02]
        [--gate-margin 1.5] [--subspace-rank 8] [--compare-skip]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=31415)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: learning.learning_rate")
    parser.add_argument("--gate-margin", type=float, default=None, help="default: learning.gate_margin")
    parser.add_argument("--subspace-rank", type=int, default=None, help="default: learning.subspace_rank")
    parser.add_argument(
        "--compare-skip", action="store_true", help="also run every locality probe (the gate before probe skipping)"
    )
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmha.config import LearningConfig, ModelConfig, default_data_dir
    from dmha.learning import ChatFormat, Editor, FeedbackItem, Gate, GateThresholds, UpdatePlan, ensure_references
    from dmha.learning.editor import delta_name
    from dmha.learning.gate import probe_live
    from dmha.learning.online import learning_cache_dir
    from dmha.learning.precision import resolve_precision
    from dmha.llm.model_store import default_model_dir
    from dmha.report.reproducibility import make_facts

    torch.set_num_threads(1)
    folder = Path(default_model_dir(default_data_dir()))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    asked = {"learning_rate": args.learning_rate, "gate_margin": args.gate_margin, "subspace_rank": args.subspace_rank}
    overrides = {k: v for k, v in asked.items() if v is not None}
    cfg = LearningConfig(**overrides)
    fmt = ChatFormat(tokenizer, ModelConfig().system_prompt)
    refs = ensure_references(model, folder, fmt, cfg.edit_layers, learning_cache_dir(default_data_dir()))
    params = dict(model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in cfg.edit_layers}
    editor = Editor(fmt, precision=cfg.train_precision)
    # ``auto`` measures once per process which precision trains faster: step counts
    # differ between the two, so the choice is part of the result.
    precision = resolve_precision(cfg.train_precision, next(model.parameters()).device)
    plan = UpdatePlan.from_config(cfg)
    space = editor.space(model, refs.stats, plan, refs.retain)
    gate = Gate(fmt, GateThresholds.from_config(cfg), workers=cfg.gate_workers or 1)
    # The live model's half of the gate, as the worker keeps it per live version.
    live_probe = probe_live(model, refs.gate, cfg.gate_workers or 1, cfg.edit_layers)
    rows: list[dict[str, Any]] = []
    for fact in make_facts(args.facts, args.seed):
        item = FeedbackItem.create(fact["input"], fact["target"])
        steps: list[float] = []
        wall, cpu = time.perf_counter(), time.process_time()
        result = editor.train(
            model,
            [item],
            plan,
            refs.stats,
            base,
            {},
            refs.retain,
            space=space,
            progress=lambda *_, ends=steps: ends.append(time.perf_counter()),
        )
        train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
        t = time.perf_counter()
        report = gate.evaluate(result.model, refs.gate, [item], [], model, live_probe, (result.delta, {}))
        gate_s = time.perf_counter() - t
        m = report.metrics
        full: dict[str, Any] = {}
        if args.compare_skip:
            t = time.perf_counter()
            every = gate.evaluate(result.model, refs.gate, [item], [], model, live_probe)
            full = {
                "gate_full_s": round(time.perf_counter() - t, 1),
                "same_verdict": every.passed == report.passed,
                "largest_metric_gap": max(abs(every.metrics[k] - m[k]) for k in m if k != "n_retain_run"),
            }
        row = {
            "fact": fact["input"],
            "steps": int(result.metrics["steps"]),
            "first_step_s": round((steps[0] if steps else time.perf_counter()) - wall, 1),
            "train_s": round(train_wall, 1),
            "train_cpu_s": round(train_cpu, 1),
            "gated_layers": int(result.metrics["gated_layers"]),
            "dropped": int(result.metrics["unreached_dropped"]),
            "gate_s": round(gate_s, 1),
            "probes_run": int(m["n_retain_run"]),
            **full,
            "passed": report.passed,
            **{
                k: round(m[k], 4)
                for k in ("efficacy", "generalisation", "locality", "locality_strict", "kl_mean", "kl_prompt_max")
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    extra = {"gate_full_s_median": statistics.median(r["gate_full_s"] for r in rows)} if args.compare_skip else {}
    summary = {
        "learning_rate": cfg.learning_rate,
        "train_precision": precision,
        "gate_margin": cfg.gate_margin,
        "subspace_rank": cfg.subspace_rank,
        "seed": args.seed,
        "facts": len(rows),
        "passed": sum(r["passed"] for r in rows),
        "steps_median": statistics.median(r["steps"] for r in rows),
        "train_s_median": statistics.median(r["train_s"] for r in rows),
        "train_cpu_s_median": statistics.median(r["train_cpu_s"] for r in rows),
        "gate_s_median": statistics.median(r["gate_s"] for r in rows),
        "probes_run_median": statistics.median(r["probes_run"] for r in rows),
    }
    print(json.dumps({**summary, **extra}))


if __name__ == "__main__":
    main()
