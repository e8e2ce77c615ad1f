"""Figure 4: the utility map — which modules each update used, and what it cost.

Three views, each drawn when its data exists:

- the causal meta-learner's utility ``u_i`` of every edit layer in every update
  attempt (recorded with the plan, ``plan.extra.meta.utilities``; layers whose
  utility gate was off are hatched);
- the measured change per module of every deployed update: each version stores its
  *cumulative* delta from base (``delta.safetensors``), so the change an update
  made to module m is ``||delta_v[m] - delta_parent[m]||_F`` (a version whose
  parent's delta was pruned shows its cumulative norm, marked);
- the compute of each attempt: the FLOPs the editor counted (``metrics.flops``),
  or, for records made before it counted them, an estimate
  ``6 * P * steps * sequences * tokens``, beside the measured training seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

from dmha.report.inputs import JobRecord, VersionRecord
from dmha.report.style import RED, Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = [
    "ModuleChange",
    "UpdateCost",
    "UpdateUtility",
    "module_label",
    "update_label",
    "update_norms",
    "utilities_of",
    "utility_section",
]

TITLE = "Utility map"
_LAYER = re.compile(r"layers\.(\d+)\.(.+?)(?:\.weight)?$")

DeltaLoader = Callable[[str], Mapping[str, Any] | None]
"""version id -> its cumulative delta (name -> tensor or array), None when unreadable/pruned."""


@dataclass(frozen=True)
class ModuleChange:
    """The per-module change of one deployed update.

    Attributes:
        version_id: the version the update produced.
        measure: ``update`` (difference from the parent) or ``cumulative`` (the
            parent's delta was unavailable).
        norms: module name -> Frobenius norm.
    """

    version_id: str
    measure: str
    norms: dict[str, float]


@dataclass(frozen=True)
class UpdateUtility:
    """The meta-learner's utility gates of one update attempt.

    Attributes:
        label: the update (its version, or its job and state).
        state: the attempt's final state.
        utilities: edit layer -> ``u`` in [0, 1].
        active: the layers whose gate was on.
    """

    label: str
    state: str
    utilities: dict[int, float]
    active: tuple[int, ...]


@dataclass(frozen=True)
class UpdateCost:
    """The compute of one update attempt.

    Attributes:
        label: the update (its version, or its job and state).
        steps: optimisation steps run.
        sequences_per_step: sequences in each step's loss (from the plan).
        tokens_per_sequence: mean tokens of its feedback sequences (None unknown).
        params: parameters of the model.
        train_seconds: measured training time (None unknown).
        counted_flops: FLOPs the editor counted (None for older records).
    """

    label: str
    steps: int
    sequences_per_step: int
    tokens_per_sequence: float | None
    params: int
    train_seconds: float | None
    counted_flops: float | None = None

    @property
    def estimated_flops(self) -> float | None:
        """``6 * P * steps * sequences * tokens`` (None when the token count is unknown)."""
        if self.tokens_per_sequence is None or self.params <= 0:
            return None
        return 6.0 * self.params * self.steps * self.sequences_per_step * self.tokens_per_sequence

    @property
    def flops(self) -> float | None:
        """Counted FLOPs when recorded, else the estimate."""
        return self.counted_flops if self.counted_flops is not None else self.estimated_flops


def module_label(name: str) -> str:
    """``model.layers.4.mlp.down_proj.weight`` -> ``L4 mlp.down_proj``."""
    m = _LAYER.search(name)
    return f"L{m.group(1)} {m.group(2)}" if m else name.removesuffix(".weight")


def update_label(job: JobRecord) -> str:
    """A deployed update by its version; another by its job id and state."""
    return job.version if job.state == "deployed" and job.version else f"{job.job_id[:6]} ({job.state})"


def utilities_of(jobs: Sequence[JobRecord]) -> list[UpdateUtility]:
    """The utility gates the meta-learner recorded with each attempt's plan (oldest first)."""
    out = []
    for j in sorted(jobs, key=lambda j: (j.created_at, j.job_id)):
        meta = (j.plan.get("extra") or {}).get("meta") or {}
        raw = meta.get("utilities") or {}
        if not raw:
            continue
        utilities = {int(k): float(v) for k, v in raw.items()}
        active = tuple(int(i) for i in meta.get("active", utilities))
        out.append(UpdateUtility(update_label(j), j.state, utilities, active))
    return out


def _array(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)


def update_norms(versions: Sequence[VersionRecord], load: DeltaLoader) -> list[ModuleChange]:
    """The per-module change of every update, from the stored cumulative deltas.

    Args:
        versions: the registry's versions (base and pruned ones are skipped).
        load: reads a version's cumulative delta.

    Returns:
        One entry per readable version, in version order.
    """
    out = []
    for v in versions:
        if v.version_id == "base" or v.status == "pruned":
            continue
        delta = load(v.version_id)
        if not delta:
            continue
        parent: Mapping[str, Any] | None = {} if v.parent in (None, "base") else load(v.parent or "")
        if parent is None:
            out.append(
                ModuleChange(
                    v.version_id, "cumulative", {k: float(np.linalg.norm(_array(t))) for k, t in delta.items()}
                )
            )
            continue
        norms = {}
        for name, t in delta.items():
            before = parent.get(name)
            change = _array(t) if before is None else _array(t) - _array(before)
            norms[name] = float(np.linalg.norm(change))
        out.append(ModuleChange(v.version_id, "update", norms))
    return out


def _heat(
    ax: Any, fig: Any, grid: np.ndarray, rows: list[str], cols: list[str], label: str, vmax: float | None
) -> None:
    im = ax.imshow(grid, aspect="auto", cmap="cividis", vmin=0.0, vmax=vmax)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks(
        range(len(cols)),
        cols,
        rotation=45 if len(cols) > 6 else 0,
        ha="right" if len(cols) > 6 else "center",
        fontsize=8,
    )
    fig.colorbar(im, ax=ax, label=label)
    if grid.size <= 200:  # small maps carry their numbers
        top = float(np.nanmax(grid)) if grid.size else 1.0
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(
                    j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 * top else "black"
                )


def utility_section(
    changes: Sequence[ModuleChange],
    costs: Sequence[UpdateCost],
    out_dir: Path,
    utilities: Sequence[UpdateUtility] = (),
) -> Section:
    """Draw the meta-learner's utilities, the change per module and the cost per update.

    Writes ``utility_map.png``; ``utility_u.csv`` (``update, state, layer, u,
    active``) when utilities were recorded; ``utility_map.csv`` (``version, module,
    norm, measure``); ``flops_log.csv`` (``update, steps, sequences_per_step,
    tokens_per_sequence, params, counted_flops, estimated_flops, train_seconds``);
    ``utility_stat.json``.

    Args:
        changes: from :func:`update_norms` (deployed updates).
        costs: per update attempt.
        out_dir: the report folder.
        utilities: from :func:`utilities_of` (every attempt the meta-learner planned).

    Returns:
        The section (empty when there are neither utilities nor readable deltas).
    """
    if not changes and not utilities:
        return empty(
            "utility",
            TITLE,
            "no update was planned by the meta-learner and no deployed update's delta could be read.",
        )
    panels = [p for p, present in (("u", utilities), ("norm", changes), ("cost", costs)) if present]
    width = max(7.5, 3.0 + 0.5 * max(len(utilities), len(changes), len(costs)))
    fig, axes = new_figure(width, 3.3 * len(panels), nrows=len(panels))
    axes = np.atleast_1d(axes)
    ax_of = dict(zip(panels, axes, strict=True))
    files: list[str] = []
    stats: dict[str, Any] = {"attempts_with_utilities": len(utilities), "deployed_with_deltas": len(changes)}
    parts: list[str] = []
    if utilities:
        ax = ax_of["u"]
        layers = sorted({i for u in utilities for i in u.utilities})
        grid = np.array([[u.utilities.get(i, np.nan) for u in utilities] for i in layers])
        _heat(ax, fig, grid, [f"L{i} mlp.down_proj" for i in layers], [u.label for u in utilities], "utility u_i", 1.0)
        off_cells = [
            (j, k)
            for j, u in enumerate(utilities)
            for k, i in enumerate(layers)
            if i in u.utilities and i not in u.active
        ]
        for j, k in off_cells:
            ax.add_patch(_gate_off(j, k))
        ax.set_title(
            f"{TITLE}: the meta-learner's utility u_i per edit layer ({plural(len(utilities), 'attempt')})", fontsize=10
        )
        ax.set_ylabel("edit layer")
        if off_cells:
            ax.legend(
                handles=[Patch(fc="white", ec=RED, hatch="xx", label="gate off (layer not edited)")],
                fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.25, 1.0),
            )
        files.append(
            write_csv(
                out_dir,
                "utility_u.csv",
                ("update", "state", "layer", "u", "active"),
                [
                    (u.label, u.state, i, v, int(i in u.active))
                    for u in utilities
                    for i, v in sorted(u.utilities.items())
                ],
            )
        )
        mean_u = {i: float(np.nanmean(grid[k])) for k, i in enumerate(layers)}
        off = sum(len(u.utilities) - len(u.active) for u in utilities)
        stats["mean_utility"] = {f"L{i}": v for i, v in mean_u.items()}
        stats["gates_off"] = off
        hi = max(mean_u, key=lambda i: mean_u[i])
        lo = min(mean_u, key=lambda i: mean_u[i])
        gates = f"{plural(off, 'gate')} turned a layer off across {plural(len(utilities), 'attempt')}."
        if mean_u[hi] - mean_u[lo] < 0.01:
            parts.append(f"The meta-learner rated every edit layer alike (mean u = {mean_u[hi]:.2f}); {gates}")
        else:
            parts.append(
                f"The meta-learner rated layer {hi} most useful (mean u = {mean_u[hi]:.2f}) and layer {lo} least "
                f"({mean_u[lo]:.2f}); {gates}"
            )
    if changes:
        ax = ax_of["norm"]
        modules = sorted({m for c in changes for m in c.norms}, key=lambda n: (len(module_label(n)), module_label(n)))
        grid = np.array([[c.norms.get(m, 0.0) for c in changes] for m in modules])
        _heat(ax, fig, grid, [module_label(m) for m in modules], [c.version_id for c in changes], "||dW||_F", None)
        for j, c in enumerate(changes):
            if c.measure == "cumulative":
                ax.text(j, -0.6, "cum.", ha="center", va="bottom", fontsize=6)
        ax.set_title(
            f"Measured change per module of each deployed update ({plural(len(changes), 'version')})", fontsize=9
        )
        ax.set_ylabel("module")
        totals = grid.sum(axis=1)
        share = totals / max(float(totals.sum()), 1e-12)
        top = int(np.argmax(totals))
        stats["share_of_change"] = {module_label(m): float(s) for m, s in zip(modules, share, strict=True)}
        parts.append(
            f"Of the measured change, **{module_label(modules[top])}** carried {100 * share[top]:.0f} % "
            f"(an even spread over {plural(len(modules), 'module')} would be {100 / len(modules):.0f} %)."
        )
        files.append(
            write_csv(
                out_dir,
                "utility_map.csv",
                ("version", "module", "norm", "measure"),
                [(c.version_id, m, c.norms[m], c.measure) for c in changes for m in sorted(c.norms)],
            )
        )
    if costs:
        ax = ax_of["cost"]
        xs = np.arange(len(costs))
        counted = [c.counted_flops for c in costs]
        estimated = [c.estimated_flops if c.counted_flops is None else None for c in costs]
        if any(f is not None for f in counted):
            ax.bar(xs, [f or 0.0 for f in counted], color=colour(1), edgecolor="black", lw=0.5, label="FLOPs (counted)")
        if any(f is not None for f in estimated):
            ax.bar(
                xs,
                [f or 0.0 for f in estimated],
                color="white",
                edgecolor=colour(1),
                hatch="..",
                lw=0.8,
                label="FLOPs (estimate)",
            )
        if any(c.flops for c in costs):
            ax.set_yscale("log")
        ax.set_ylabel("training FLOPs")
        secs = [c.train_seconds for c in costs]
        if any(s is not None for s in secs):
            twin = ax.twinx()
            twin.plot(xs, [s if s is not None else np.nan for s in secs], color=colour(0), marker="o", label="seconds")
            twin.set_ylabel("training seconds")
            twin.legend(loc="upper right", fontsize=7)
        ax.legend(loc="upper left", fontsize=7)
        ax.set_xticks(
            xs,
            [c.label for c in costs],
            rotation=45 if len(costs) > 6 else 0,
            ha="right" if len(costs) > 6 else "center",
            fontsize=8,
        )
        ax.set_xlim(-0.5, len(costs) - 0.5)
        ax.set_title("Compute of each update attempt", fontsize=9)
        known = [c.flops for c in costs if c.flops]
        secs_known = [s for s in secs if s is not None]
        stats["mean_flops"] = float(np.mean(known)) if known else None
        stats["mean_train_seconds"] = float(np.mean(secs_known)) if secs_known else None
        if known:
            n_counted = sum(c.counted_flops is not None for c in costs)
            kind = "counted" if n_counted == len(costs) else "estimated" if n_counted == 0 else "counted or estimated"
            parts.append(
                f"Mean training cost {np.mean(known):.2e} FLOPs per attempt ({kind})"
                + (f", {np.mean(secs_known):.0f} s measured." if secs_known else ".")
            )
    axes[-1].set_xlabel("update (its version, or its job and state)")
    files.append(
        write_csv(
            out_dir,
            "flops_log.csv",
            (
                "update",
                "steps",
                "sequences_per_step",
                "tokens_per_sequence",
                "params",
                "counted_flops",
                "estimated_flops",
                "train_seconds",
            ),
            [
                (
                    c.label,
                    c.steps,
                    c.sequences_per_step,
                    _nan(c.tokens_per_sequence),
                    c.params,
                    _nan(c.counted_flops),
                    _nan(c.estimated_flops),
                    _nan(c.train_seconds),
                )
                for c in costs
            ],
        )
    )
    image = save_figure(fig, out_dir, "utility_map.png")
    files.append(write_json(out_dir, "utility_stat.json", stats))
    if not utilities:
        parts.append("(No plan carried the meta-learner's utilities: per-module change stands in for them.)")
    return Section("utility", TITLE, [image], files, " ".join(parts), stats={"attempts": len(utilities)})


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _gate_off(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1.0, 1.0, fill=False, hatch="xx", edgecolor=RED, lw=0)
