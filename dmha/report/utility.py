"""Figure 4: the utility map — how much each adaptable module changed in each update.

Until the causal meta-learner records per-module utilities u_i, the utility of a
module in an update is measured by the size of its change: every registered
version stores its *cumulative* delta from base (``delta.safetensors``), so the
change an update made to module m is ``||delta_v[m] - delta_parent[m]||_F``. A
version whose parent's delta was pruned by the retention policy shows its
cumulative norm instead (marked in the data). The cost of each update is an
estimate of its training FLOPs, ``6 * P * steps * sequences * tokens`` (forward and
backward through the model's P parameters), beside the measured training seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmha.report.inputs import VersionRecord
from dmha.report.style import Section, colour, empty, new_figure, plural, save_figure, write_csv, write_json

__all__ = ["ModuleChange", "UpdateCost", "module_label", "update_norms", "utility_section"]

TITLE = "Utility map"
_LAYER = re.compile(r"layers\.(\d+)\.(.+?)(?:\.weight)?$")

DeltaLoader = Callable[[str], Mapping[str, Any] | None]
"""version id -> its cumulative delta (name -> tensor or array), None when unreadable/pruned."""


@dataclass(frozen=True)
class ModuleChange:
    """The per-module change of one update.

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
class UpdateCost:
    """The compute of one update.

    Attributes:
        version_id: the version (or job) it produced.
        steps: optimisation steps run.
        sequences_per_step: sequences in each step's loss.
        tokens_per_sequence: mean tokens of the update's feedback sequences (None unknown).
        params: parameters of the model (a forward and backward pass touches all).
        train_seconds: measured training time (None unknown).
    """

    version_id: str
    steps: int
    sequences_per_step: int
    tokens_per_sequence: float | None
    params: int
    train_seconds: float | None

    @property
    def flops(self) -> float | None:
        """Estimated training FLOPs (None when the token count is unknown)."""
        if self.tokens_per_sequence is None or self.params <= 0:
            return None
        return 6.0 * self.params * self.steps * self.sequences_per_step * self.tokens_per_sequence


def module_label(name: str) -> str:
    """``model.layers.4.mlp.down_proj.weight`` -> ``L4 mlp.down_proj``."""
    m = _LAYER.search(name)
    return f"L{m.group(1)} {m.group(2)}" if m else name.removesuffix(".weight")


def _norm(x: Any) -> float:
    arr = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    return float(np.linalg.norm(arr))


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
            out.append(ModuleChange(v.version_id, "cumulative", {k: _norm(t) for k, t in delta.items()}))
            continue
        norms = {}
        for name, t in delta.items():
            before = parent.get(name)
            if before is None:
                norms[name] = _norm(t)
            else:
                a = t.detach().float() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)
                b = before.detach().float() if hasattr(before, "detach") else np.asarray(before, dtype=np.float32)
                norms[name] = _norm(a - b)
        out.append(ModuleChange(v.version_id, "update", norms))
    return out


def utility_section(changes: Sequence[ModuleChange], costs: Sequence[UpdateCost], out_dir: Path) -> Section:
    """Draw the modules x updates map of change and the cost of each update; write the data.

    Writes ``utility_map.png``, ``utility_map.csv`` (``version, module, norm,
    measure``) and ``flops_log.csv`` (``version, steps, sequences_per_step,
    tokens_per_sequence, params, est_flops, train_seconds``).

    Args:
        changes: from :func:`update_norms`.
        costs: per update (any subset of the versions).
        out_dir: the report folder.

    Returns:
        The section (empty when no update's delta could be read).
    """
    if not changes:
        return empty(
            "utility",
            TITLE,
            "no model update's delta could be read (no version was deployed, or every delta was pruned).",
        )
    modules = sorted({m for c in changes for m in c.norms}, key=lambda n: (module_label(n).split()[0], n))
    versions = [c.version_id for c in changes]
    grid = np.array([[c.norms.get(m, 0.0) for c in changes] for m in modules])
    cost_by = {c.version_id: c for c in costs}
    fig, (ax, ax2) = new_figure(max(7.0, 2.5 + 0.45 * len(versions)), 7.0, nrows=2)
    im = ax.imshow(grid, aspect="auto", cmap="cividis", vmin=0.0)
    ax.set_yticks(range(len(modules)), [module_label(m) for m in modules], fontsize=8)
    ax.set_xticks(range(len(versions)), versions, rotation=45 if len(versions) > 8 else 0, fontsize=8)
    ax.set_xlabel("update (model version it produced)")
    ax.set_ylabel("module")
    ax.set_title(f"{TITLE}: change per module per update, ||dW||_F ({plural(len(versions), 'update')})", fontsize=10)
    fig.colorbar(im, ax=ax, label="Frobenius norm of the change")
    if grid.size <= 200:  # small maps carry their numbers
        top = float(grid.max()) or 1.0
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 * top else "black")
    for j, c in enumerate(changes):
        if c.measure == "cumulative":
            ax.text(j, -0.6, "cum.", ha="center", va="bottom", fontsize=6)
    flops = [cost_by[v].flops if v in cost_by else None for v in versions]
    secs = [cost_by[v].train_seconds if v in cost_by else None for v in versions]
    xs = np.arange(len(versions))
    if any(f is not None for f in flops):
        ax2.bar(xs, [f or 0.0 for f in flops], color=colour(1), edgecolor="black", lw=0.5, label="estimated FLOPs")
        ax2.set_yscale("log")
        ax2.set_ylabel("training FLOPs (estimate)")
        if any(s is not None for s in secs):
            twin = ax2.twinx()
            twin.plot(xs, [s if s is not None else np.nan for s in secs], color=colour(0), marker="o", label="seconds")
            twin.set_ylabel("measured training seconds")
            twin.legend(loc="upper right", fontsize=8)
        ax2.legend(loc="upper left", fontsize=8)
    else:
        ax2.bar(xs, [s or 0.0 for s in secs], color=colour(0), edgecolor="black", lw=0.5, label="training seconds")
        ax2.set_ylabel("measured training seconds")
        ax2.legend(fontsize=8)
    ax2.set_xticks(xs, versions, rotation=45 if len(versions) > 8 else 0, fontsize=8)
    ax2.set_xlim(-0.5, len(versions) - 0.5)
    ax2.set_xlabel("update (model version it produced)")
    ax2.set_title("Cost of each update", fontsize=9)
    image = save_figure(fig, out_dir, "utility_map.png")
    data = write_csv(
        out_dir,
        "utility_map.csv",
        ("version", "module", "norm", "measure"),
        [(c.version_id, m, c.norms[m], c.measure) for c in changes for m in sorted(c.norms)],
    )
    flops_log = write_csv(
        out_dir,
        "flops_log.csv",
        ("version", "steps", "sequences_per_step", "tokens_per_sequence", "params", "est_flops", "train_seconds"),
        [
            (
                c.version_id,
                c.steps,
                c.sequences_per_step,
                c.tokens_per_sequence if c.tokens_per_sequence is not None else float("nan"),
                c.params,
                c.flops if c.flops is not None else float("nan"),
                c.train_seconds if c.train_seconds is not None else float("nan"),
            )
            for c in costs
        ],
    )
    totals = grid.sum(axis=1)
    share = totals / max(float(totals.sum()), 1e-12)
    top = int(np.argmax(totals))
    known = [f for f in flops if f is not None]
    stats: dict[str, Any] = {
        "updates": len(versions),
        "modules": [module_label(m) for m in modules],
        "share_of_change": {module_label(m): float(s) for m, s in zip(modules, share, strict=True)},
        "mean_est_flops": float(np.mean(known)) if known else None,
        "mean_train_seconds": float(np.mean([s for s in secs if s is not None])) if any(secs) else None,
    }
    stat = write_json(out_dir, "utility_stat.json", stats)
    finding = (
        f"{plural(len(versions), 'update')} changed {plural(len(modules), 'module')}; "
        f"**{module_label(modules[top])}** carried "
        f"{100 * share[top]:.0f} % of the summed change (an even spread would be {100 / len(modules):.0f} %)."
    )
    if known:
        finding += f" Mean estimated training cost {np.mean(known):.2e} FLOPs per update"
        finding += f" ({stats['mean_train_seconds']:.0f} s measured)." if stats["mean_train_seconds"] else "."
    finding += " (Per-module delta norms stand in for the meta-learner's utilities u_i until it records them.)"
    return Section("utility", TITLE, [image], [data, flops_log, stat], finding, stats={"updates": len(versions)})
