"""Where one knowledge edit's time goes: float32 vs bfloat16 training, 1 vs 2 gate threads.

Loads the real default model and its learning references (``dmha setup``), then for
each of ``--facts`` seeded fictitious facts (``dmha.report.reproducibility.make_facts``)
trains the same edit twice in one run — float32 and bfloat16 training passes, order
alternated per fact so both see the same machine load — with a fixed number of steps
(early stop off, so both do the same work), and runs the gate's locality probe over
the candidate with 1 and with 2 threads. The edit space is computed once per live
version, as the worker does. Reported per variant: wall and process CPU seconds of
the setup (teachers, keys, retain choice: a 1-step edit) and per optimisation step
(from an ``--steps`` edit minus the setup), the edits' final losses (both precisions
must learn alike), and the gate probe's wall time. CPU seconds hardly move with the
machine's load; wall ratios do. Prints a table and one final JSON line.

    python bench/edit_speed.py [--facts 3] [--steps 8] [--seed 12345]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _timed(fn):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    import torch

    from dmha.config import default_data_dir, load_config
    from dmha.learning.editor import Editor, delta_name
    from dmha.learning.feedback import FeedbackItem
    from dmha.learning.generation import answer_logits
    from dmha.learning.loading import read_base_weights
    from dmha.learning.online import learning_cache_dir
    from dmha.learning.plan import UpdatePlan
    from dmha.learning.precision import bf16_faster, bf16_native
    from dmha.learning.prompting import ChatFormat
    from dmha.learning.references import ensure_references
    from dmha.llm.engine import load_eager_handle
    from dmha.llm.model_store import ensure_model
    from dmha.report.reproducibility import make_facts

    torch.set_num_threads(1)
    cfg = load_config(None)
    model_dir = ensure_model(None, default_data_dir())
    handle = load_eager_handle(Path(model_dir), cfg.model)
    model = handle.torch_model
    fmt = ChatFormat(handle.tokenizer, cfg.model.system_prompt)
    cache = learning_cache_dir(default_data_dir())
    refs = ensure_references(model, Path(model_dir), fmt, cfg.learning.edit_layers, cache)
    plan = UpdatePlan.from_config(cfg.learning).with_changes(stop_margin=0.0)
    base = read_base_weights(Path(model_dir), [delta_name(i) for i in plan.edit_layers])
    space, space_wall, space_cpu = _timed(lambda: Editor(fmt).space(model, refs.stats, plan))

    variants = ("float32", "bfloat16")
    rows: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    gate: dict[int, list[float]] = {1: [], 2: []}

    def add(variant: str, key: str, value: float) -> None:
        rows[variant].setdefault(key, []).append(value)

    for i, fact in enumerate(make_facts(args.facts, args.seed)):
        item = FeedbackItem(f"f{i}", fact["input"], fact["target"])
        candidate = None
        for variant in variants if i % 2 == 0 else variants[::-1]:
            editor = Editor(fmt, precision=variant)

            def edit(n: int, editor: Editor = editor, item: FeedbackItem = item):  # type: ignore[no-untyped-def]
                return editor.train(
                    model, [item], plan.with_changes(steps=n), refs.stats, base, {}, refs.retain, space=space
                )

            _, setup_wall, setup_cpu = _timed(lambda: edit(1))
            result, wall, cpu = _timed(lambda: edit(args.steps))
            add(variant, "setup_wall", setup_wall)
            add(variant, "setup_cpu", setup_cpu)
            add(variant, "step_wall", (wall - setup_wall) / (args.steps - 1))
            add(variant, "step_cpu", (cpu - setup_cpu) / (args.steps - 1))
            add(variant, "final_loss", result.losses[-1])
            candidate = result.model
        with torch.no_grad():
            for workers in (1, 2) if i % 2 == 0 else (2, 1):
                _, wall, _ = _timed(lambda w=workers, c=candidate: answer_logits(c, refs.gate.seqs, workers=w))
                gate[workers].append(wall)
        print(f"fact {i + 1}/{args.facts} done", flush=True)

    med = {v: {k: statistics.median(x) for k, x in r.items()} for v, r in rows.items()}
    cpu = torch.device("cpu")
    print(
        f"\nmachine: {os.cpu_count()} cores, CPU, torch threads 1; bf16 native: {bf16_native(cpu)}, "
        f"measured faster (what `auto` uses): {bf16_faster(cpu)}"
    )
    print(f"edit space (once per live version): {space_wall:.1f}s wall, {space_cpu:.1f}s CPU")
    print(f"{'training':>10} {'setup wall':>11} {'setup CPU':>10} {'step wall':>10} {'step CPU':>9} {'final loss':>11}")
    for v in variants:
        m = med[v]
        print(
            f"{v:>10} {m['setup_wall']:>10.1f}s {m['setup_cpu']:>9.1f}s {m['step_wall']:>9.2f}s "
            f"{m['step_cpu']:>8.2f}s {m['final_loss']:>11.3f}"
        )
    g1, g2 = statistics.median(gate[1]), statistics.median(gate[2])
    print(f"gate locality probe (100 prompts x 32 tokens): 1 thread {g1:.1f}s, 2 threads {g2:.1f}s")
    summary = {
        "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
        "facts": args.facts,
        "steps": args.steps,
        "medians": med,
        "step_cpu_ratio_fp32_over_bf16": med["float32"]["step_cpu"] / med["bfloat16"]["step_cpu"],
        "step_wall_ratio_fp32_over_bf16": med["float32"]["step_wall"] / med["bfloat16"]["step_wall"],
        "edit_space_seconds": space_wall,
        "gate_probe_seconds": {"1": g1, "2": g2},
        "gate_probe_ratio_1_over_2": g1 / g2,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
