"""What the meta-learner sees of an update: one documented feature vector.

The state is taken after the first ``observe_steps`` optimisation steps of an edit
(the learner adjusts the rest of it), from figures the editor measures anyway:

========================  ==============================================================
feature                   meaning
========================  ==============================================================
``grad_out_l{k}``         log1p of the gradient norm at the output of the k-th edit
                          module (slot k of the plan's layers, mean over observed steps)
``grad_w_l{k}``           log1p of the gradient norm of that module's factors
``causal_before``         KL(P(Y|do(T)) || P(Y|T)) at step 1 (how far the fact is)
``causal_now``            the same at the last observed step
``locality_now``          the locality KL at the last observed step
``loss_first``            total loss at step 1
``loss_slope``            mean change of the total loss per observed step (ΔL)
``loss_jump``             largest rise of the loss between two observed steps
``margin``                smallest target-vs-rival logit gap at the last observed step
``key_share``             share of the fact's key energy in the editable subspace
``similar_deploy``        deploy rate of the most similar earlier updates (0.5 if none)
``similar_steps``         their mean share of the step budget used (0.5 if none)
``n_items``               feedback items in the update (log1p)
``n_replay``              replayed earlier items (log1p)
``attempt``               0 for a first try, 1, 2, ... for repairs
========================  ==============================================================

Similarity between updates is word overlap of their inputs (Jaccard): cheap,
model-free, and what makes "questions like this one" concrete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["MAX_SLOTS", "FEATURES", "StepObservation", "UpdateState", "similar_outcomes"]

MAX_SLOTS = 8
"""Edit modules the state describes (plans with more layers share the last slot)."""

FEATURES: tuple[str, ...] = (
    *(f"grad_out_l{k}" for k in range(MAX_SLOTS)),
    *(f"grad_w_l{k}" for k in range(MAX_SLOTS)),
    "causal_before",
    "causal_now",
    "locality_now",
    "loss_first",
    "loss_slope",
    "loss_jump",
    "margin",
    "key_share",
    "similar_deploy",
    "similar_steps",
    "n_items",
    "n_replay",
    "attempt",
)

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class StepObservation:
    """One optimisation step as the editor saw it.

    Attributes:
        step: 1-based step.
        loss: total loss.
        parts: the loss terms (``ce``, ``causal``, ``locality``, ``margin``).
        grad_out: per edit layer, the gradient norm at the module's change output.
        grad_w: per edit layer, the gradient norm of its factors.
        flops: floating-point operations the step took (counted).
    """

    step: int
    loss: float
    parts: dict[str, float]
    grad_out: dict[int, float]
    grad_w: dict[int, float]
    flops: float = 0.0


@dataclass(frozen=True)
class UpdateState:
    """The meta-learner's input for one update.

    Attributes:
        values: feature name -> value (every name of :data:`FEATURES`).
        layers: the plan's edit layers, in slot order.
    """

    values: dict[str, float]
    layers: tuple[int, ...] = field(default=())

    @classmethod
    def build(
        cls,
        observed: Sequence[StepObservation],
        layers: Sequence[int],
        key_share: float,
        similar: tuple[float, float],
        n_items: int,
        n_replay: int,
        attempt: int,
    ) -> UpdateState:
        """Summarise the observed steps.

        Args:
            observed: the first steps (none when the update failed before its first
                step: the step features are then 0).
            layers: the plan's edit layers.
            key_share: :attr:`EditResult.metrics` ``key_null_share``.
            similar: ``(deploy rate, step share)`` of similar past updates.
            n_items: feedback items in the update.
            n_replay: replayed items.
            attempt: repair attempt number (0 = first try).

        Returns:
            The state; non-finite inputs become 0 (the learner never sees NaN).
        """
        v: dict[str, float] = dict.fromkeys(FEATURES, 0.0)
        for k, layer in enumerate(layers):
            slot = min(k, MAX_SLOTS - 1)
            outs = [o.grad_out.get(layer, 0.0) for o in observed] or [0.0]
            ws = [o.grad_w.get(layer, 0.0) for o in observed] or [0.0]
            v[f"grad_out_l{slot}"] = math.log1p(sum(outs) / len(outs))
            v[f"grad_w_l{slot}"] = math.log1p(sum(ws) / len(ws))
        if observed:
            losses = [o.loss for o in observed]
            jumps = [b - a for a, b in zip(losses, losses[1:], strict=False)]
            v["causal_before"] = observed[0].parts.get("causal", 0.0)
            v["causal_now"] = observed[-1].parts.get("causal", 0.0)
            v["locality_now"] = observed[-1].parts.get("locality", 0.0)
            v["loss_first"] = losses[0]
            v["loss_slope"] = sum(jumps) / len(jumps) if jumps else 0.0
            v["loss_jump"] = max(jumps, default=0.0)
            v["margin"] = observed[-1].parts.get("margin", 0.0)
        v["key_share"] = key_share
        v["similar_deploy"], v["similar_steps"] = similar
        v["n_items"] = math.log1p(n_items)
        v["n_replay"] = math.log1p(n_replay)
        v["attempt"] = float(attempt)
        clean = {k: (x if math.isfinite(x) else 0.0) for k, x in v.items()}
        return cls(clean, tuple(layers))

    def vector(self) -> torch.Tensor:
        """The features as a float32 vector in :data:`FEATURES` order."""
        return torch.tensor([self.values[k] for k in FEATURES], dtype=torch.float32)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"values": dict(self.values), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> UpdateState:
        """Inverse of :meth:`to_dict` (missing features read as 0).

        Raises:
            ValueError: ``values`` is not a mapping of numbers.
        """
        raw = data.get("values")
        if not isinstance(raw, dict):
            raise ValueError("state.values must be an object of numbers")
        values = dict.fromkeys(FEATURES, 0.0)
        for k, x in raw.items():
            if k in values:
                values[k] = float(x)
        layers = data.get("layers", [])
        return cls(values, tuple(int(i) for i in layers) if isinstance(layers, list) else ())


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def similar_outcomes(text: str, past: Iterable[tuple[str, bool, float]], k: int = 5) -> tuple[float, float]:
    """Deploy rate and step share of the ``k`` past updates whose inputs look most alike.

    Args:
        text: the new update's input.
        past: ``(input, deployed, share of the step budget used)`` of earlier updates.
        k: neighbours.

    Returns:
        ``(deploy rate, step share)``, each 0.5 when there is no past update.
    """
    mine = _words(text)
    scored = []
    for other, deployed, steps in past:
        theirs = _words(other)
        union = len(mine | theirs)
        scored.append((len(mine & theirs) / union if union else 0.0, deployed, steps))
    scored.sort(key=lambda t: t[0], reverse=True)
    top = scored[:k]
    if not top:
        return 0.5, 0.5
    return sum(d for _, d, _ in top) / len(top), sum(s for _, _, s in top) / len(top)
