"""Figure 5: meta and learning dynamics — how each update was made and judged.

Per training job (oldest first): the plan's loss weights λ1 (causal KL) and λ2
(locality KL) and its update scale θ = learning rate × scale; the gate's metrics,
deployed updates filled and rejected ones red; and the Submit -> live time of each
deployed update (submission to the job's final transition). When only versions are
known (no job records), the versions' own metrics and plans are used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D

from dmha.report.inputs import AttemptRecord, JobRecord, VersionRecord
from dmha.report.style import RED, Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = ["GATE_METRICS", "learning_dynamics", "rows_from_versions"]

TITLE = "Meta and learning dynamics"
GATE_METRICS = ("efficacy", "generalisation", "retention", "locality")
_COLUMNS = (
    "job_id",
    "created_at",
    "state",
    "version",
    "lambda_causal",
    "lambda_locality",
    "theta",
    *GATE_METRICS,
    "kl_mean",
    "kl_prompt_max",
    "submit_to_live_s",
    "attempts",
    "message",
    "meta_reason",
)


def rows_from_versions(versions: Sequence[VersionRecord]) -> list[JobRecord]:
    """Job-like rows from deployed versions (when the job records are not available).

    Submit -> live is the worker's measured ``total_seconds`` (it excludes time queued).
    """
    out = []
    for v in versions:
        if v.version_id == "base":
            continue
        # The version is committed just before it goes live; the job began total_seconds earlier.
        live_s = v.metrics.get("total_seconds", 0.0)
        out.append(
            JobRecord(
                v.version_id,
                "deployed",
                v.created_at - live_s,
                v.created_at,
                v.metrics,
                v.plan,
                v.version_id,
                items=max(1, len(v.feedback_ids)),
            )
        )
    return out


def _theta(plan: Mapping[str, Any]) -> float:
    if "learning_rate" not in plan:
        return float("nan")
    return float(plan["learning_rate"]) * float(plan.get("scale", 1.0))


def learning_dynamics(
    jobs: Sequence[JobRecord],
    out_dir: Path,
    thresholds: Mapping[str, float] | None = None,
    attempts: Sequence[AttemptRecord] = (),
) -> Section:
    """Draw λ1, λ2, θ, the gate metrics and Submit -> live per job; write the data.

    Writes ``learning_dynamics.png``, ``learning_dynamics.csv`` (one row per job:
    ``job_id, created_at, state, version, lambda_causal, lambda_locality, theta,
    efficacy, generalisation, retention, locality, kl_mean, kl_prompt_max,
    submit_to_live_s, message, meta_reason``: the meta-learner's reason for the plan)
    and ``learning_stat.json``.

    Args:
        jobs: finished and running jobs (candidates are skipped).
        out_dir: the report folder.
        thresholds: gate floors by metric name (drawn as dashed lines).
        attempts: the meta-learner's records: the λ1, λ2 and learning rate each job's
            last attempt trained with (after the learner's adjustment), and repairs.

    Returns:
        The section (empty when no update was trained).
    """
    done = sorted(
        (j for j in jobs if j.state in ("deployed", "rejected", "failed")), key=lambda j: (j.created_at, j.job_id)
    )
    if not done:
        return empty("dynamics", TITLE, "no feedback was trained in the period (no deployed or rejected update).")
    x = np.arange(1, len(done) + 1)
    deployed = np.array([j.state == "deployed" for j in done])
    fig, axes = new_figure(9.5, 8.5, nrows=3)
    ax1, ax2, ax3 = axes
    tries: dict[str, list[AttemptRecord]] = {}
    for a in sorted(attempts, key=lambda a: a.attempt):
        tries.setdefault(a.job_id, []).append(a)
    l1, l2, theta, n_tries = [], [], [], []
    for j in done:
        last = tries[j.job_id][-1] if j.job_id in tries else None
        # What the last attempt trained with; the job's plan is what it started with.
        l1.append(last.lambda_causal if last else float(j.plan.get("lambda_causal", np.nan)))
        l2.append(last.lambda_locality if last else float(j.plan.get("lambda_locality", np.nan)))
        scale = float(j.plan.get("scale", 1.0))
        theta.append(last.learning_rate * scale if last else _theta(j.plan))
        n_tries.append(len(tries.get(j.job_id, ())) or 1)
    ax1.plot(x, l1, marker="o", color=colour(0), label="λ1 causal-KL weight")
    ax1.plot(x, l2, marker="s", color=colour(1), label="λ2 locality-KL weight")
    ax1.set_ylabel("loss weight")
    twin = ax1.twinx()
    twin.plot(x, theta, marker="^", ls="--", color=colour(2), label="θ = learning rate × scale")
    twin.set_ylabel("θ (update scale)")
    for xpos, n in zip(x, n_tries, strict=True):
        if n > 1:
            ax1.annotate(
                f"{n} tries", (xpos, 0.97), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=7
            )
    handles = ax1.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax1.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.16, 1.0))
    ax1.set_title(f"{TITLE}: {plural(len(done), 'update')}, {int(deployed.sum())} deployed", fontsize=10)
    for i, name in enumerate(GATE_METRICS):
        vals = np.array([j.metrics.get(name, np.nan) for j in done], dtype=np.float64)
        if np.all(np.isnan(vals)):
            continue
        # Metrics side by side around each update, so equal values do not hide each other.
        xi = x + (i - (len(GATE_METRICS) - 1) / 2) * 0.09
        ax2.plot(xi, vals, color=colour(i), lw=0.8, alpha=0.7)
        ax2.scatter(xi[deployed], vals[deployed], color=colour(i), edgecolors="black", zorder=3, s=30)
        ax2.scatter(xi[~deployed], vals[~deployed], color=colour(i), marker="X", edgecolors=RED, zorder=3, s=70)
        if thresholds and name in thresholds:
            ax2.axhline(thresholds[name], color=colour(i), ls=":", lw=1)
    metric_handles = [Line2D([], [], color=colour(i), marker="o", label=n) for i, n in enumerate(GATE_METRICS)]
    metric_handles += [
        Line2D([], [], ls="", marker="o", mfc="white", mec="black", label="deployed"),
        Line2D([], [], ls="", marker="X", mfc="white", mec=RED, label="rejected / failed"),
    ]
    if thresholds:
        metric_handles.append(Line2D([], [], color="black", ls=":", label="gate floor"))
    ax2.legend(handles=metric_handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.16, 1.0))
    ax2.set_ylabel("gate metric")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_title("Gate metrics per update", fontsize=9)
    verdict = np.array([j.updated_at - j.created_at for j in done])
    live = np.where(deployed, verdict, np.nan)
    if deployed.any():
        ax3.bar(x[deployed], verdict[deployed], color=colour(4), edgecolor="black", lw=0.5, label="Submit -> live")
    if (~deployed).any():
        ax3.bar(
            x[~deployed],
            verdict[~deployed],
            color="white",
            edgecolor=RED,
            hatch="//",
            lw=0.8,
            label="Submit -> verdict (rejected / failed)",
        )
    ax3.set_ylabel("seconds")
    ax3.set_xlabel("update (oldest first)")
    ax3.set_title("Time from Submit to live (or to the rejection)", fontsize=9)
    ax3.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.16, 1.0))
    for ax in axes:
        ax.set_xticks(x if len(x) <= 30 else x[:: max(1, len(x) // 15)])
        ax.set_xlim(0.5, len(x) + 0.5)
    image = save_figure(fig, out_dir, "learning_dynamics.png")
    rows = [
        (
            j.job_id,
            j.created_at,
            j.state,
            j.version,
            a,
            b,
            t,
            *(j.metrics.get(m, float("nan")) for m in GATE_METRICS),
            j.metrics.get("kl_mean", float("nan")),
            j.metrics.get("kl_prompt_max", float("nan")),
            float(s),
            n,
            j.message,
            str(((j.plan.get("extra") or {}).get("meta") or {}).get("reason", "")),
        )
        for j, a, b, t, s, n in zip(done, l1, l2, theta, live, n_tries, strict=True)
    ]
    data = write_csv(out_dir, "learning_dynamics.csv", _COLUMNS, rows)
    states = Counter(j.state for j in done)
    live_ok = live[deployed]
    stats: dict[str, Any] = {
        "updates": len(done),
        "states": dict(sorted(states.items())),
        "deploy_rate": float(deployed.mean()),
        "submit_to_live_p50_s": float(np.median(live_ok)) if len(live_ok) else None,
        "submit_to_live_max_s": float(np.max(live_ok)) if len(live_ok) else None,
        "gate_means": {
            m: float(np.nanmean(v))
            if not np.all(np.isnan(v := np.array([j.metrics.get(m, np.nan) for j in done])))
            else None
            for m in GATE_METRICS
        },
        "plans_vary": len({(a, b, t) for a, b, t in zip(l1, l2, theta, strict=True) if not np.isnan(a)}) > 1,
        "repaired": sum(n > 1 for n in n_tries),
        "attempts": sum(n_tries),
    }
    stat = write_json(out_dir, "learning_stat.json", stats)
    finding = (
        f"**{int(deployed.sum())} of {plural(len(done), 'update')}** deployed ({100 * deployed.mean():.0f} %)"
        + (
            f"; {', '.join(f'{n} {s}' for s, n in sorted(states.items()) if s != 'deployed')}"
            if len(states) > 1
            else ""
        )
        + "."
    )
    if len(live_ok):
        finding += f" Submit -> live: median {np.median(live_ok):.0f} s, longest {np.max(live_ok):.0f} s."
    finding += (
        " The plans varied between updates (λ1, λ2 or θ changed)."
        if stats["plans_vary"]
        else " Every update trained with the same λ1, λ2 and θ."
    )
    if stats["repaired"]:
        finding += f" {plural(stats['repaired'], 'update')} needed repairs ({stats['attempts']} attempts in all)."
    rejected = [j for j in done if j.state != "deployed" and j.message]
    if rejected:
        finding += f" First rejection: {rejected[0].message[:160]}."
    return Section("dynamics", TITLE, [image], [data, stat], finding, stats={"deploy_rate": stats["deploy_rate"]})
