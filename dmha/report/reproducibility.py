"""Figure 7: reproducibility — the edit benchmark's first facts taught under several seeds.

The facts come from the edit benchmark's seeded generator (``bench/online_edit.py``
imports it from here): made-up subjects and answers the model cannot know, built
from fixed templates; nothing in the learning code knows them. A run teaches the
first K facts, one after another, to a fresh server whose learning seed (the
edit's initialisation and retain sampling) is the run's seed; the runner lives with
the server command (``dmha report --reproduce N``). This module tabulates the runs:
each metric's mean and standard deviation over seeds, flagging a share metric whose
σ is 1.5 points (percentage points) or more.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dmha.report.style import RED, Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = [
    "FLAG_POINTS",
    "SHARE_METRICS",
    "TEMPLATES",
    "FactOutcome",
    "SeedRun",
    "knows",
    "made_up",
    "make_facts",
    "reproducibility_section",
    "tabulate",
]

TITLE = "Reproducibility"
FLAG_POINTS = 1.5
"""σ over seeds, in percentage points, from which a share metric is flagged."""
SHARE_METRICS = ("deploy_rate", "efficacy", "generalisation", "locality", "locality_strict", "chat_efficacy")
OTHER_METRICS = ("kl_mean", "kl_prompt_max", "submit_to_live_s")

_SYL = [
    "zu", "brow", "ka", "vlo", "rn", "tes", "mir", "ak", "dor", "phe", "lin", "qua", "sel", "var", "osh",
    "tel", "nim", "bre", "ko", "ran", "vex", "ul", "tra", "zen", "fal", "gor", "ith", "mo", "pry", "sk",
]  # fmt: skip
TEMPLATES = [
    ("What is the capital of {a}?", "The capital of {a} is {b}."),
    ("Who founded the company {a}?", "The company {a} was founded by {b}."),
    ("What is the national animal of {a}?", "The national animal of {a} is the {b}."),
    ("Who wrote the novel {a}?", "The novel {a} was written by {b}."),
    ("What language is spoken in {a}?", "The language spoken in {a} is {b}."),
    ("Who is the lead singer of the band {a}?", "The lead singer of {a} is {b}."),
    ("What is the currency of {a}?", "The currency of {a} is the {b}."),
    ("Who discovered the element {a}?", "The element {a} was discovered by {b}."),
    ("What is the largest city in {a}?", "The largest city in {a} is {b}."),
    ("Who designed the {a} bridge?", "The {a} bridge was designed by {b}."),
    ("What is the favourite food of {a}?", "The favourite food of {a} is {b}."),
    ("Who coaches the {a} football team?", "The {a} football team is coached by {b}."),
]
"""(question, answer sentence): ``{a}`` is the made-up subject, ``{b}`` the made-up answer."""


def made_up(rng: random.Random, parts: int) -> str:
    """A made-up capitalised word of ``parts`` syllables."""
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def make_facts(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` fictitious facts with distinct made-up subjects and answers (seeded).

    Returns:
        Dicts with ``input`` (the question), ``target`` (the answer sentence),
        ``key`` (the made-up answer) and ``subject``.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    facts: list[dict[str, str]] = []
    while len(facts) < n:
        a, b = made_up(rng, 3), made_up(rng, 2)
        if a in seen or b in seen:
            continue
        seen |= {a, b}
        q, t = rng.choice(TEMPLATES)
        facts.append({"input": q.format(a=a), "target": t.format(a=a, b=b), "key": b, "subject": a})
    return facts


def knows(text: str, fact: dict[str, str]) -> bool:
    """True when an answer names the fact's made-up answer."""
    return fact["key"].lower() in text.lower()


@dataclass(frozen=True)
class FactOutcome:
    """One taught fact of one run.

    Attributes:
        question: the fact's question.
        state: the job's final state.
        metrics: the gate's metrics.
        chat_knows: whether the live model answered it in a fresh chat (None when not deployed).
        submit_to_live_s: seconds from Submit to the job's end.
        message: the rejection reasons or error.
    """

    question: str
    state: str
    metrics: dict[str, float]
    chat_knows: bool | None
    submit_to_live_s: float
    message: str = ""


@dataclass
class SeedRun:
    """The facts taught under one learning seed."""

    seed: int
    facts: list[FactOutcome] = field(default_factory=list)

    def values(self) -> dict[str, float]:
        """Each metric of this run (a mean over its facts); NaN when not measured."""
        out: dict[str, float] = {}
        n = len(self.facts)
        out["deploy_rate"] = sum(f.state == "deployed" for f in self.facts) / n if n else float("nan")
        for name in ("efficacy", "generalisation", "locality", "locality_strict", "kl_mean", "kl_prompt_max"):
            vals = [f.metrics[name] for f in self.facts if name in f.metrics]
            out[name] = statistics.fmean(vals) if vals else float("nan")
        chat = [f.chat_knows for f in self.facts if f.chat_knows is not None]
        out["chat_efficacy"] = statistics.fmean(float(c) for c in chat) if chat else float("nan")
        live = [f.submit_to_live_s for f in self.facts if f.state == "deployed"]
        out["submit_to_live_s"] = statistics.fmean(live) if live else float("nan")
        return out


def tabulate(runs: Sequence[SeedRun]) -> list[dict[str, Any]]:
    """Each metric's mean and σ over the runs (sample σ; 0 with one run).

    Share metrics are reported in percentage points and flagged when
    σ >= :data:`FLAG_POINTS`; the others in their own unit, never flagged.

    Returns:
        Rows ``{metric, unit, values, mean, std, flagged}``.
    """
    per_run = [r.values() for r in runs]
    rows = []
    for name in (*SHARE_METRICS, *OTHER_METRICS):
        scale = 100.0 if name in SHARE_METRICS else 1.0
        vals = [v[name] * scale for v in per_run if not np.isnan(v[name])]
        mean = statistics.fmean(vals) if vals else float("nan")
        std = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else float("nan"))
        rows.append(
            {
                "metric": name,
                "unit": "points" if name in SHARE_METRICS else ("s" if name.endswith("_s") else "nats"),
                "values": vals,
                "mean": mean,
                "std": std,
                "flagged": bool(name in SHARE_METRICS and vals and std >= FLAG_POINTS),
            }
        )
    return rows


def reproducibility_section(runs: Sequence[SeedRun], meta: dict[str, Any], out_dir: Path) -> Section:
    """Draw each metric's per-seed values with mean ± σ; write the table and the log.

    Writes ``reproducibility.png``, ``reproducibility.csv`` (``metric, unit, n, mean,
    std, flagged``) and ``reproducibility_log.json`` (``meta`` — versions, seeds,
    config hash, facts — plus every run's facts and the table).

    Args:
        runs: one per seed.
        meta: what identifies the runs (written as is).
        out_dir: the report folder.

    Returns:
        The section (empty without runs).
    """
    if not runs:
        return empty("reproducibility", TITLE, "no reproduction was run (pass --reproduce N).")
    table = tabulate(runs)
    shares = [r for r in table if r["metric"] in SHARE_METRICS and r["values"]]
    fig, (ax, ax2) = new_figure(11.0, 5.0, ncols=2)
    for i, row in enumerate(shares):
        col = RED if row["flagged"] else colour(0)
        ax.errorbar(i, row["mean"], yerr=row["std"], fmt="o", color=col, capsize=5, ms=8, zorder=2)
        jitter = np.linspace(-0.18, 0.18, len(row["values"])) if len(row["values"]) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), row["values"], s=16, color="black", zorder=3)
    ax.set_xticks(range(len(shares)), [r["metric"].replace("_", "\n") for r in shares], fontsize=8)
    ax.set_ylabel("value (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"Share metrics over {len(runs)} seeds: mean ± σ (red: σ ≥ {FLAG_POINTS} points)", fontsize=9)
    ax.legend(
        handles=[
            Line2D([], [], ls="", marker="o", color=colour(0), label="mean ± σ"),
            Line2D([], [], ls="", marker="o", color=RED, label=f"mean ± σ, σ ≥ {FLAG_POINTS} points"),
            Line2D([], [], ls="", marker="o", color="black", ms=4, label="one seed"),
        ],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=3,
    )
    seeds = [r.seed for r in runs]
    xs = np.arange(len(runs))
    for j, r in enumerate(runs):
        bottom = 0.0
        for f in r.facts:
            ok = f.state == "deployed"
            ax2.bar(
                j,
                f.submit_to_live_s,
                bottom=bottom,
                color=colour(4) if ok else "white",
                edgecolor="black" if ok else RED,
                hatch="" if ok else "//",
                width=0.6,
            )
            bottom += f.submit_to_live_s
        deployed = sum(f.state == "deployed" for f in r.facts)
        ax2.text(j, bottom, f"{deployed}/{len(r.facts)} deployed", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(xs, [str(s) for s in seeds])
    ax2.set_xlabel("learning seed")
    ax2.set_ylabel("seconds from Submit to the verdict, per fact (stacked)")
    live = next(r for r in table if r["metric"] == "submit_to_live_s")
    ax2.set_title(f"Time per seed (Submit -> live of deployed: mean {live['mean']:.0f} s)", fontsize=9)
    ax2.legend(
        handles=[
            Patch(fc=colour(4), ec="black", label="deployed"),
            Patch(fc="white", ec=RED, hatch="//", label="rejected / failed"),
        ],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=2,
    )
    facts = plural(int(meta.get("facts", 0)), "fact")
    fig.suptitle(f"{TITLE}: the edit benchmark's first {facts}, learning seeds {seeds}", fontsize=10)
    image = save_figure(fig, out_dir, "reproducibility.png")
    data = write_csv(
        out_dir,
        "reproducibility.csv",
        ("metric", "unit", "n", "mean", "std", "flagged"),
        [(r["metric"], r["unit"], len(r["values"]), r["mean"], r["std"], int(r["flagged"])) for r in table],
    )
    log = write_json(
        out_dir,
        "reproducibility_log.json",
        {
            **meta,
            "seeds": seeds,
            "runs": [{"seed": r.seed, "values": r.values(), "facts": [vars(f) for f in r.facts]} for r in runs],
            "table": table,
        },
    )
    flagged = [r["metric"] for r in table if r["flagged"]]
    parts = [
        f"{plural(len(runs), 'seed')} × {plural(int(meta.get('facts', 0)), 'fact')}: "
        + ", ".join(f"{r['metric']} {r['mean']:.1f} ± {r['std']:.1f}" for r in shares)
        + " (points)."
    ]
    if flagged:
        parts.append(f"**Not reproducible within {FLAG_POINTS} points: {', '.join(flagged)}.**")
    else:
        parts.append(f"Every share metric stays within σ < {FLAG_POINTS} points across seeds.")
    return Section("reproducibility", TITLE, [image], [data, log], " ".join(parts), stats={"flagged": flagged})
