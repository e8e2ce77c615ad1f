"""Figure 6: the consistency monitor's score of every reply against its threshold.

Scores come from the monitor's score log (every reviewed reply, firing or not);
firings are marked with their outcome (corrected, answered from the KB, flagged,
unresolved). The stacked signals below show which signal drove each score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from dmha.report.inputs import ScoreRecord
from dmha.report.style import RED, Section, colour, empty, new_figure, save_figure, write_csv, write_json

__all__ = ["consistency_section"]

TITLE = "Consistency monitor"
SIGNALS = ("kb_contradiction", "memory_disagreement", "low_confidence")
_OUTCOME_MARKERS = {"corrected": "^", "answered_from_kb": "s", "flagged": "o", "unresolved": "X"}


def consistency_section(scores: Sequence[ScoreRecord], threshold: float, out_dir: Path) -> Section:
    """Draw scores over turns with the threshold and the firings; write the data.

    Writes ``monitor_scores.png``, ``monitor_scores.csv`` (``index, turn_id,
    session_id, created_at, score, kb_contradiction, memory_disagreement,
    low_confidence, fired, outcome, actions``) and ``monitor_stat.json``.

    Args:
        scores: the user's monitor verdicts, any order (sorted by time here).
        threshold: the firing threshold.
        out_dir: the report folder.

    Returns:
        The section (empty when no reply was scored).
    """
    if not scores:
        return empty(
            "monitor",
            TITLE,
            "no reply of this user was scored (the monitor is off, or nothing was said in the period).",
        )
    rows = sorted(scores, key=lambda s: (s.created_at, s.turn_id))
    x = np.arange(1, len(rows) + 1)
    y = np.array([r.score for r in rows])
    fig, (ax, ax2) = new_figure(9.0, 6.0, nrows=2)
    ax.plot(x, y, color=colour(0), lw=1.0, marker="o", ms=3, label="score of the reply")
    ax.axhline(threshold, color=RED, ls="--", lw=1.2, label=f"threshold {threshold:g}")
    handles = [
        Line2D([], [], color=colour(0), marker="o", ms=3, label="score of the reply"),
        Line2D([], [], color=RED, ls="--", label=f"threshold {threshold:g}"),
    ]
    for outcome in sorted({r.outcome for r in rows if r.fired}):
        idx = [i for i, r in enumerate(rows) if r.fired and r.outcome == outcome]
        ax.scatter(x[idx], y[idx], s=70, marker=_OUTCOME_MARKERS.get(outcome, "D"), c=RED, edgecolors="black", zorder=3)
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=_OUTCOME_MARKERS.get(outcome, "D"),
                mfc=RED,
                mec="black",
                label=f"fired: {outcome}",
            )
        )
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("inconsistency score")
    ax.set_title(f"{TITLE}: {len(rows)} replies, {sum(r.fired for r in rows)} firings")
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom = np.zeros(len(rows))
    for i, name in enumerate(SIGNALS):
        vals = np.array([r.signals.get(name, 0.0) for r in rows])
        ax2.bar(x, vals, bottom=bottom, color=colour(i + 1), label=name.replace("_", " "), width=0.8)
        bottom += vals
    ax2.set_xlabel("reply (oldest first)")
    ax2.set_ylabel("signal value (stacked)")
    ax2.set_title("Signals behind each score", fontsize=9)
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    image = save_figure(fig, out_dir, "monitor_scores.png")
    data = write_csv(
        out_dir,
        "monitor_scores.csv",
        ("index", "turn_id", "session_id", "created_at", "score", *SIGNALS, "fired", "outcome", "actions"),
        [
            (
                i + 1,
                r.turn_id,
                r.session_id,
                r.created_at,
                r.score,
                *(r.signals.get(s, 0.0) for s in SIGNALS),
                int(r.fired),
                r.outcome,
                ";".join(r.actions),
            )
            for i, r in enumerate(rows)
        ],
    )
    fired = [r for r in rows if r.fired]
    outcomes = Counter(r.outcome for r in fired)
    stats = {
        "replies": len(rows),
        "threshold": threshold,
        "fired": len(fired),
        "outcomes": dict(sorted(outcomes.items())),
        "score_mean": float(y.mean()),
        "score_max": float(y.max()),
        "above_threshold_not_fired": int(sum(1 for r in rows if r.score >= threshold and not r.fired)),
    }
    stat = write_json(out_dir, "monitor_stat.json", stats)
    if fired:
        drivers = Counter(max(SIGNALS, key=lambda s: r.signals.get(s, 0.0)) for r in fired)
        outcome_text = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in sorted(outcomes.items()))
        finding = (
            f"The monitor fired on **{len(fired)} of {len(rows)}** replies ({100 * len(fired) / len(rows):.0f} %); "
            f"outcomes: {outcome_text}. The strongest signal of the firings was "
            f"{drivers.most_common(1)[0][0].replace('_', ' ')}. Mean score {y.mean():.2f} (threshold {threshold:g})."
        )
    else:
        finding = (
            f"All {len(rows)} replies stayed below the threshold {threshold:g} (highest score {y.max():.2f}); "
            "the monitor never fired."
        )
    return Section("monitor", TITLE, [image], [data, stat], finding, stats={"fired": len(fired), "replies": len(rows)})
