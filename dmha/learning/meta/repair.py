"""Repair mode: what a failed update is retried with.

Triggers: the loss turned NaN/inf, it jumped up by more than ``spike_nats`` between
two steps, or the gate rejected the candidate. The candidate is discarded (the
live model was never touched) and the update is retried with a repaired plan,
at most ``max_repairs`` times:

- every utility gate on (all edit layers), a new seed;
- θ reset to the fixed plan's learning rate (halved after a divergence);
- λ smoothed half-way back to the fixed plan;
- then, for a gate rejection, the direction the failing metric points to: an edit
  that did not take (efficacy, generalisation, retention) gets more room (a larger
  step, more steps, a higher stopping margin, more causal weight for
  paraphrases, and for a key-gated edit a lower gate margin, so the gate opens on
  more of the fact's tokens); an edit that reached too far (locality, KL, perplexity)
  gets a smaller step and more locality weight over more retain prompts (and a gated
  one a higher margin).

The loss is stable again when the moving mean of the last ten losses stops moving
(:func:`stabilised`); the learned utilities then apply to the next update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dmha.learning.plan import UpdatePlan

__all__ = ["Repair", "repair_plan", "stabilised", "trigger_of"]

_UNDER = ("efficacy", "generalisation", "retention")
_OVER = ("locality", "kl_mean", "kl_prompt_max", "perplexity")


@dataclass(frozen=True)
class Repair:
    """One repaired retry.

    Attributes:
        attempt: 1 for the first repair, ...
        trigger: what failed (``diverged``, ``loss spike``, ``gate``).
        reason: the failing figures, as reported.
        plan: the plan of the retry.
        changes: field -> (before, after) of every changed knob.
    """

    attempt: int
    trigger: str
    reason: str
    plan: UpdatePlan
    changes: dict[str, tuple[float, float]]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "attempt": self.attempt,
            "trigger": self.trigger,
            "reason": self.reason,
            "changes": {k: list(v) for k, v in self.changes.items()},
        }


def trigger_of(reasons: Sequence[str]) -> tuple[bool, bool]:
    """``(under, over)``: whether the gate's reasons say the edit fell short / reached too far."""
    under = any(r.startswith(_UNDER) for r in reasons)
    over = any(r.startswith(_OVER) for r in reasons)
    return under, over


def repair_plan(failed: UpdatePlan, fixed: UpdatePlan, trigger: str, reasons: Sequence[str], attempt: int) -> Repair:
    """The plan to retry with after ``failed`` failed.

    Args:
        failed: the plan that failed.
        fixed: the deployment's fixed plan (the safe prior).
        trigger: ``diverged``, ``loss spike`` or ``gate``.
        reasons: the failure's reasons (the gate's, or the error message).
        attempt: 1-based repair number (later repairs move further).

    Returns:
        The repair.
    """
    lr = fixed.learning_rate
    lam_c = 0.5 * (failed.lambda_causal + fixed.lambda_causal)
    lam_l = 0.5 * (failed.lambda_locality + fixed.lambda_locality)
    steps, margin, retain = fixed.steps, fixed.stop_margin, fixed.retain_per_step
    gate = fixed.gate_margin
    if trigger in ("diverged", "loss spike"):
        lr = fixed.learning_rate * 0.5**attempt
    else:
        under, over = trigger_of(reasons)
        if over:
            # Safety first: an edit that moved unrelated answers is shrunk, whatever else failed.
            lr = fixed.learning_rate * 0.6**attempt
            lam_l = max(lam_l, fixed.lambda_locality) * 3.0**attempt
            retain = max(1, fixed.retain_per_step) * 2
            gate = fixed.gate_margin * 1.25**attempt
        elif under:
            lr = fixed.learning_rate * 1.5**attempt
            steps = math.ceil(fixed.steps * (1 + 0.5 * attempt))
            margin = fixed.stop_margin + 1.0 * attempt
            if fixed.gate_margin > 0:
                # Never below 1: the gate would then open on the retain prompts themselves.
                gate = max(1.0, fixed.gate_margin * 0.75**attempt)
            if any(r.startswith("generalisation") for r in reasons):
                lam_c = max(lam_c, fixed.lambda_causal) * 2.0**attempt
    plan = failed.with_changes(
        edit_layers=fixed.edit_layers,
        learning_rate=lr,
        lambda_causal=lam_c,
        lambda_locality=lam_l,
        steps=steps,
        stop_margin=margin,
        retain_per_step=retain,
        gate_margin=gate,
        seed=fixed.seed + 1000 * attempt,
        extra={"repair": attempt, "trigger": trigger},
    )
    changes = {}
    knobs = ("learning_rate", "lambda_causal", "lambda_locality", "steps", "stop_margin", "retain_per_step")
    for name in (*knobs, "gate_margin"):
        before, after = float(getattr(failed, name)), float(getattr(plan, name))
        if not math.isclose(before, after):
            changes[name] = (before, after)
    if failed.edit_layers != plan.edit_layers:
        changes["edit_layers"] = (float(len(failed.edit_layers)), float(len(plan.edit_layers)))
    reason = "; ".join(reasons) if reasons else trigger
    return Repair(attempt, trigger, reason, plan, changes)


def stabilised(losses: Sequence[float], window: int = 10, tol: float = 0.02) -> bool:
    """True when the moving mean of the last ``window`` losses has converged.

    Converged: it moved by less than ``tol`` (relative) from the previous window's
    mean, shifted by one step. Fewer than ``window + 1`` losses is not yet stable.
    """
    if len(losses) < window + 1 or not all(math.isfinite(x) for x in losses[-window - 1 :]):
        return False
    now = sum(losses[-window:]) / window
    before = sum(losses[-window - 1 : -1]) / window
    return abs(now - before) <= tol * max(1e-6, abs(before))
