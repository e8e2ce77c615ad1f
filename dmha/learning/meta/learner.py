"""The MetaCausalLearner: state of an update -> how to change its plan.

A small MLP maps :class:`~dmha.learning.meta.state.UpdateState` to

- three deltas in log space: ``Δλ1`` (causal weight), ``Δλ2`` (locality weight) and
  ``Δθ`` (the update's size: its learning rate; the adapter scale and the frozen
  base are left alone), and
- one utility logit per edit module; ``u = σ(logit)``, and a module whose utility is
  below the threshold is skipped for the rest of the update.

Its output layers start at zero deltas and utilities ``σ(4) ≈ 0.98``: an untrained
learner returns the fixed plan exactly (the safe prior). Raw deltas then pass
through an EMA across updates and a clip to the configured bound before they reach
an :class:`~dmha.learning.plan.UpdatePlan`; NaN becomes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dmha.config import MetaConfig
from dmha.learning.meta.state import FEATURES, MAX_SLOTS, UpdateState
from dmha.learning.plan import UpdatePlan

__all__ = ["DELTAS", "Decision", "MetaCausalLearner", "PlanAdjuster"]

DELTAS = ("d_causal", "d_locality", "d_theta")
"""Names of the learner's delta outputs, in order (log-space multipliers)."""

_UTILITY_PRIOR = 4.0


class MetaCausalLearner(nn.Module):
    """``state -> (deltas, utility logits)``.

    Args:
        hidden: width of the two hidden layers.
    """

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        n = len(FEATURES)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.body = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.deltas = nn.Linear(hidden, len(DELTAS))
        self.utility = nn.Linear(hidden, MAX_SLOTS)
        with torch.no_grad():
            # The safe prior: no change to the plan, every module on.
            self.deltas.weight.zero_()
            self.deltas.bias.zero_()
            self.utility.weight.zero_()
            self.utility.bias.fill_(_UTILITY_PRIOR)

    def fit_normaliser(self, states: torch.Tensor) -> None:
        """Set the input standardisation from a batch of state vectors ``[n, features]``."""
        with torch.no_grad():
            # A feature that never varied in the buffer says nothing: unit scale, so a
            # new value of it cannot blow the standardised input up.
            self.mean.copy_(states.mean(0))
            std = states.std(0, unbiased=False) if len(states) > 1 else torch.ones_like(self.std)
            self.std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, features] -> ([n, 3] deltas, [n, MAX_SLOTS] utility logits)``."""
        # Clipped: a state far outside the replay buffer must not saturate every unit.
        h = self.body(((states - self.mean) / self.std).clamp(-5.0, 5.0))
        return self.deltas(h), self.utility(h)


@dataclass(frozen=True)
class Decision:
    """What the learner decided for one update.

    Attributes:
        deltas: name (:data:`DELTAS`) -> the applied log-space change (after EMA,
            exploration and clipping).
        raw: the same straight from the network.
        utilities: edit layer -> ``u`` in [0, 1].
        active: the edit layers kept.
        reason: one line saying what changed and why.
    """

    deltas: dict[str, float]
    raw: dict[str, float]
    utilities: dict[int, float]
    active: tuple[int, ...]
    reason: str
    noise: dict[str, float] = field(default_factory=dict)

    def apply(self, plan: UpdatePlan) -> UpdatePlan:
        """The plan with the deltas applied (λ1, λ2 and the learning rate)."""
        return plan.with_changes(
            lambda_causal=plan.lambda_causal * math.exp(self.deltas["d_causal"]),
            lambda_locality=plan.lambda_locality * math.exp(self.deltas["d_locality"]),
            learning_rate=plan.learning_rate * math.exp(self.deltas["d_theta"]),
            extra={**plan.extra, "meta": self.to_dict()},
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (recorded with the plan)."""
        return {
            "deltas": self.deltas,
            "raw": self.raw,
            "noise": self.noise,
            "utilities": {str(k): v for k, v in self.utilities.items()},
            "active": list(self.active),
            "reason": self.reason,
        }


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


class PlanAdjuster:
    """Turns the learner's raw outputs into bounded, smoothed plan changes.

    Args:
        cfg: the meta config (EMA factor, bound, utility threshold, exploration).
        seed: seeds the exploration noise.
    """

    def __init__(self, cfg: MetaConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self._ema: dict[str, float] = dict.fromkeys(DELTAS, 0.0)
        self._gen = torch.Generator().manual_seed(seed)

    def decide(self, learner: MetaCausalLearner, state: UpdateState, explore: bool, repair: bool = False) -> Decision:
        """The learner's decision for ``state``.

        Args:
            learner: the (possibly untrained) network.
            state: the update's state.
            explore: add exploration noise (only once the learner has been trained).
            repair: repair mode: every module on, no exploration.

        Returns:
            The decision; every delta within ``±max_log_change`` and finite.
        """
        with torch.no_grad():
            d, u = learner(state.vector()[None])
        raw = {name: _finite(float(x)) for name, x in zip(DELTAS, d[0].tolist(), strict=True)}
        noise = dict.fromkeys(DELTAS, 0.0)
        if explore and not repair and self.cfg.exploration > 0:
            eps = torch.randn(len(DELTAS), generator=self._gen) * self.cfg.exploration
            noise = dict(zip(DELTAS, eps.tolist(), strict=True))
        bound = self.cfg.max_log_change
        deltas = {}
        for name in DELTAS:
            smoothed = self.cfg.ema * self._ema[name] + (1 - self.cfg.ema) * raw[name]
            deltas[name] = max(-bound, min(bound, smoothed + noise[name]))
            self._ema[name] = max(-bound, min(bound, smoothed))
        probs = torch.sigmoid(u[0]).tolist()
        layers = state.layers
        utilities = {layer: _finite(probs[min(k, MAX_SLOTS - 1)]) for k, layer in enumerate(layers)}
        if repair:
            active = tuple(layers)
        else:
            keep = [i for i in layers if utilities[i] >= self.cfg.utility_threshold]
            # Never fewer than two modules: one layer alone rarely carries a fact.
            ranked = sorted(layers, key=lambda i: utilities[i], reverse=True)
            active = tuple(sorted(set(keep) | set(ranked[:2])))
        return Decision(deltas, raw, utilities, active, _reason(deltas, utilities, active, layers, repair), noise)


def _reason(
    deltas: dict[str, float],
    utilities: dict[int, float],
    active: tuple[int, ...],
    layers: tuple[int, ...],
    repair: bool,
) -> str:
    parts = []
    names = {"d_causal": "causal weight", "d_locality": "locality weight", "d_theta": "learning rate"}
    for name, x in deltas.items():
        if abs(x) >= 0.01:
            parts.append(f"{names[name]} x{math.exp(x):.2f}")
    skipped = [i for i in layers if i not in active]
    if skipped:
        low = ", ".join(f"{i} (u={utilities[i]:.2f})" for i in skipped)
        parts.append(f"skips layers {low}")
    if repair:
        parts.append("repair mode: every module on")
    return "; ".join(parts) if parts else "fixed plan (no change learned yet)"
