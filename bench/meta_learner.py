"""Causal meta-learner benchmark: learned plans and repairs against the fixed plan.

Runs the real training worker in-process on the real default model with a real
(embedded) Redis, fresh registries under a temporary folder, freezing off (this
measures learning, not serving; ``bench/online_edit.py`` measures the served path).
Facts come from the seeded generator of ``bench/online_edit.py``; the facts the
learner trains on (seed 2000) are never among those it is evaluated on (seeds
1000 + s).

1. train: the meta-learner learns from ``--train-facts`` sequential updates;
2. per seed s (``--seeds``): ``--eval-facts`` held-out facts taught in sequence from
   base twice — once with the fixed plan (no meta-learner, no repairs, default
   initialisation) and once with the trained learner (its plans, utilities, repairs
   and meta-initialisation); deploy rate, gate figures, steps, counted FLOPs;
3. faults: ``--faults`` held-out facts whose first plan is broken on purpose
   (learning rate x100, x1e30 -> NaN/inf, one step at 1/100 the rate -> the gate
   fails); caught = the broken attempt never went live; repaired = a repaired
   attempt passed the gate; the live weights are compared before and after every
   job that did not deploy.

Prints a line per update and one final JSON line.

    python bench/meta_learner.py [--quick] [--train-facts 20] [--eval-facts 50] [--seeds 5] [--faults 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

sys.path.insert(0, str(Path(__file__).parent))
from online_edit import make_facts

from dmha.config import load_config
from dmha.learning.feedback import FeedbackItem
from dmha.learning.jobs import Job, JobStore
from dmha.learning.meta.controller import MetaController
from dmha.learning.plan import UpdatePlan
from dmha.learning.registry import Registry
from dmha.learning.worker import LearningWorker
from dmha.llm.base import ModelHandle
from dmha.llm.engine import load_eager_handle
from dmha.redis_connection import RedisConnection

TRAIN_SEED = 2000
EVAL_SEED = 1000
FAULTS: list[tuple[str, Callable[[UpdatePlan], UpdatePlan]]] = [
    ("lr x100", lambda p: p.with_changes(learning_rate=p.learning_rate * 100)),
    ("nan (lr x1e30)", lambda p: p.with_changes(learning_rate=p.learning_rate * 1e30)),
    ("gate-failing (1 step, lr /100)", lambda p: p.with_changes(steps=1, learning_rate=p.learning_rate / 100)),
]


def _digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class Bench:
    """One base model, one Redis; a fresh registry per run."""

    def __init__(self, root: Path) -> None:
        self.cfg = load_config(None)
        self.model_dir = self.cfg.data_dir / "models" / "SmolLM2-135M-Instruct"
        if not self.model_dir.is_dir():
            sys.exit(f"no model at {self.model_dir}: run `make setup` first")
        self.root = root
        self.conn = RedisConnection(self.cfg.redis, root)
        self.cache = self.cfg.data_dir / "cache" / "learning"
        self.base = load_eager_handle(self.model_dir, self.cfg.model)
        self.runs = 0

    def worker(
        self, meta_dir: Path | None, plan_for: Callable[[Job, UpdatePlan], UpdatePlan] | None = None, **changes: Any
    ) -> tuple[LearningWorker, JobStore, list[ModelHandle]]:
        """A worker over a fresh registry starting at base (``meta_dir`` None = fixed plan)."""
        self.runs += 1
        learning = self.cfg.learning.model_copy(update={"freeze": False, **changes})
        registry = Registry(self.root / f"registry-{self.runs}", self.model_dir)
        jobs = JobStore(self.conn, prefix=f"bench{self.runs}:")
        live = [self.base]
        meta = MetaController(learning.meta, meta_dir) if meta_dir is not None else None
        worker = LearningWorker(
            learning,
            jobs,
            registry,
            lambda: live[0],
            lambda h: live.__setitem__(0, h),
            self.cfg.model.system_prompt,
            self.cache,
            plan_for=plan_for,
            meta=meta,
        )
        return worker, jobs, live

    def teach(self, worker: LearningWorker, jobs: JobStore, fact: dict[str, str]) -> tuple[Job, float]:
        """Submit one fact and run it to a final state; returns the job and Submit -> final seconds."""
        job = jobs.submit([FeedbackItem.create(fact["input"], fact["target"], 4096)], "bench-trainer")
        t0 = time.monotonic()
        done = worker.run_once(timeout=1.0)
        assert done is not None and done.job_id == job.job_id
        return done, time.monotonic() - t0


def _line(tag: str, fact: dict[str, str], job: Job, seconds: float) -> dict[str, Any]:
    m = job.metrics
    row = {
        "arm": tag,
        "input": fact["input"],
        "state": job.state,
        "seconds": round(seconds, 1),
        "repairs": int(job.plan.get("extra", {}).get("repair", 0)),
        **{k: round(float(m[k]), 4) for k in ("efficacy", "generalisation", "locality", "steps", "flops") if k in m},
    }
    print(json.dumps(row), flush=True)
    return row


def _arm(bench: Bench, tag: str, facts: list[dict[str, str]], meta_dir: Path | None) -> list[dict[str, Any]]:
    worker, jobs, _ = bench.worker(meta_dir)
    return [_line(tag, f, *bench.teach(worker, jobs, f)) for f in facts]


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    def mean(key: str, only_deployed: bool = False) -> float:
        xs = [r[key] for r in rows if key in r and (r["state"] == "deployed" or not only_deployed)]
        return statistics.fmean(xs) if xs else 0.0

    return {
        "deploy_rate": sum(r["state"] == "deployed" for r in rows) / len(rows),
        "efficacy": mean("efficacy"),
        "generalisation": mean("generalisation"),
        "locality": mean("locality"),
        "steps": mean("steps", only_deployed=True),
        "flops": mean("flops", only_deployed=True),
        "seconds": mean("seconds"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few facts and seeds (about 15 minutes on 2 idle cores)")
    ap.add_argument("--train-facts", type=int, default=20)
    ap.add_argument("--eval-facts", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--faults", type=int, default=10)
    args = ap.parse_args()
    if args.quick:
        args.train_facts, args.eval_facts, args.seeds, args.faults = 3, 2, 2, 3
    torch.set_num_threads(1)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="dmha-meta-bench-"))
    bench = Bench(root)
    meta_dir = root / "meta-trained"
    try:
        # 1. The learner learns from sequential updates on training facts only.
        # The learner trains from its second record on (the default waits for 6).
        eager = bench.cfg.learning.meta.model_copy(update={"min_records": 2})
        worker, jobs, _ = bench.worker(meta_dir, meta=eager)
        for f in make_facts(args.train_facts, TRAIN_SEED):
            _line("train", f, *bench.teach(worker, jobs, f))
        trained = MetaController(bench.cfg.learning.meta, meta_dir)
        print(f"# learner {trained.learner_version} trained on {len(trained.store.records())} attempts", flush=True)

        # 2. Fixed vs learned on held-out facts, per seed.
        per_seed: list[dict[str, dict[str, float]]] = []
        for s in range(args.seeds):
            facts = make_facts(args.eval_facts, EVAL_SEED + s)
            fixed = _summary(_arm(bench, f"fixed/s{s}", facts, None))
            copy = root / f"meta-eval-{s}"
            shutil.copytree(meta_dir, copy)  # each seed starts from the same trained learner
            learned = _summary(_arm(bench, f"learned/s{s}", facts, copy))
            per_seed.append({"fixed": fixed, "learned": learned})

        # 3. Injected faults, repaired by the trained learner.
        fault_facts = make_facts(args.faults, EVAL_SEED + 99)
        caught = repaired = 0
        untouched = True
        for i, fact in enumerate(fault_facts):
            name, breaks = FAULTS[i % len(FAULTS)]
            copy = root / f"meta-fault-{i}"
            shutil.copytree(meta_dir, copy)
            worker, jobs, live = bench.worker(copy, plan_for=lambda job, plan, b=breaks: b(plan))
            before = _digest(live[0].torch_model)
            job, seconds = bench.teach(worker, jobs, fact)
            row = _line(f"fault:{name}", fact, job, seconds)
            first_failed = row["repairs"] > 0 or job.state != "deployed"
            caught += first_failed
            repaired += job.state == "deployed" and row["repairs"] > 0
            if job.state != "deployed":
                untouched &= _digest(live[0].torch_model) == before
            else:
                untouched &= all(job.metrics.get(k, 0.0) >= 0.9 for k in ("efficacy", "generalisation"))
    finally:
        bench.conn.close()
        shutil.rmtree(root, ignore_errors=True)

    fixed_all = {k: [p["fixed"][k] for p in per_seed] for k in per_seed[0]["fixed"]}
    learned_all = {k: [p["learned"][k] for p in per_seed] for k in per_seed[0]["learned"]}
    mean_fixed = {k: statistics.fmean(v) for k, v in fixed_all.items()}
    mean_learned = {k: statistics.fmean(v) for k, v in learned_all.items()}
    sigma = {
        k: 100 * statistics.pstdev(v)
        for k, v in learned_all.items()
        if k in ("deploy_rate", "efficacy", "generalisation", "locality")
    }
    result = {
        "steps_ratio_meta_vs_scratch": mean_learned["steps"] / mean_fixed["steps"] if mean_fixed["steps"] else None,
        "deploy_rate_learned": mean_learned["deploy_rate"],
        "deploy_rate_fixed": mean_fixed["deploy_rate"],
        "learned": mean_learned,
        "fixed": mean_fixed,
        "flops_reduction": 1 - mean_learned["flops"] / mean_fixed["flops"] if mean_fixed["flops"] else None,
        "faults_total": args.faults,
        "faults_caught": caught,
        "faults_repaired": repaired,
        "live_untouched": untouched,
        "seed_sigma_points": sigma,
        "seed_sigma_max_points": max(sigma.values()) if sigma else None,
        "train_facts": args.train_facts,
        "eval_facts": args.eval_facts,
        "seeds": args.seeds,
        "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
