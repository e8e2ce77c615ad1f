"""Training the meta-learner from the registry's history of updates.

Reward of one attempt (the design's, with a penalty for what never shipped):

    R = -L_total - η1 · KL_causal + η2 · FLOPs_reduction - penalty · [not deployed]

The deltas are trained by reward-weighted regression: the network's output for a
recorded state is pulled towards the deltas that attempt used, weighted by
``exp(z(R))`` (the reward standardised over the replay buffer). It is a
first-order, off-policy policy improvement: exploration noise and repairs supply
different actions for similar states, the better-rewarded ones win. The utility head
is trained with the IB-JSD loss towards the goodness measured on the same attempt.
Adam, gradient clipping 1.0, a bounded replay buffer; run after each finished job,
off the request path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch

from dmha.config import MetaConfig
from dmha.learning.meta.learner import DELTAS, MetaCausalLearner
from dmha.learning.meta.store import LearnerVersion, MetaRecord
from dmha.learning.meta.utility import ib_jsd

__all__ = ["LOSS_CAP", "reward", "train_learner"]

log = logging.getLogger(__name__)

LOSS_CAP = 20.0
"""Nats: a loss or KL above this (or NaN) counts as this in the reward."""


def reward(deployed: bool, loss: float, causal_kl: float, flops_reduction: float, cfg: MetaConfig) -> float:
    """The reward of one update attempt.

    Args:
        deployed: it passed the gate and went live.
        loss: its final total loss.
        causal_kl: its final causal KL.
        flops_reduction: share of the all-modules FLOPs it did not spend (0..1).
        cfg: η1, η2 and the penalty.

    Returns:
        ``R``. Loss and KL are capped at :data:`LOSS_CAP` nats and a non-finite one
        counts as the cap, so a diverged attempt always scores below any finite one.
    """

    def capped(x: float) -> float:
        return min(max(x, 0.0), LOSS_CAP) if math.isfinite(x) else LOSS_CAP

    r = -capped(loss) - cfg.reward_causal * capped(causal_kl)
    r += cfg.reward_flops * max(0.0, min(1.0, flops_reduction))
    return r - (0.0 if deployed else cfg.reject_penalty)


def train_learner(
    learner: MetaCausalLearner, records: Sequence[MetaRecord], cfg: MetaConfig, version: str, seed: int = 0
) -> LearnerVersion:
    """Fit ``learner`` in place on ``records``.

    Args:
        learner: the current learner (its weights are the starting point).
        records: the replay buffer (at least ``cfg.min_records``).
        cfg: epochs and reward weights.
        version: the id the result gets.
        seed: seeds the batch order.

    Returns:
        The version's summary.

    Raises:
        ValueError: fewer records than ``cfg.min_records``.
    """
    if len(records) < cfg.min_records:
        raise ValueError(f"the learner needs {cfg.min_records} records, got {len(records)}")
    torch.manual_seed(seed)
    states = torch.stack([r.update_state().vector() for r in records])
    actions = torch.stack([r.action_vector() for r in records])
    q = torch.stack([r.goodness_vector() for r in records])
    rewards = torch.tensor([r.reward for r in records], dtype=torch.float32)
    z = (rewards - rewards.mean()) / rewards.std(unbiased=False).clamp(min=1e-6)
    weights = z.clamp(max=3.0).exp()
    weights = weights / weights.sum()
    learner.fit_normaliser(states)
    learner.train()
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    loss = torch.zeros(())
    for _ in range(cfg.train_epochs):
        d, u = learner(states)
        regression = (weights[:, None] * (d - actions).pow(2)).sum()
        loss = regression + ib_jsd(torch.sigmoid(u), q)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 1.0)
        opt.step()
    learner.eval()
    with torch.no_grad():
        d, _ = learner(states)
    mean = {name: float(x) for name, x in zip(DELTAS, d.mean(0).tolist(), strict=True)}
    deployed = [r for r in records[-20:] if r.outcome == "deployed"]
    fell = [r for r in deployed if r.figures.get("causal_last", 0.0) <= r.state["values"].get("causal_before", 0.0)]
    stability = len(fell) / len(deployed) if deployed else 0.0
    log.info(
        "meta-learner %s trained on %d records: loss %.4f, mean deltas %s",
        version,
        len(records),
        float(loss.detach()),
        mean,
    )
    return LearnerVersion(version, time.time(), len(records), mean, stability, float(loss.detach()))
