"""What the training worker calls: the meta-learner around each update attempt.

Per attempt, :meth:`MetaController.attempt` gives the editor a hook that

1. starts the edit factors from the meta-initialisation (not in repair mode);
2. watches every step and raises :class:`~dmha.errors.LossSpike` when the loss
   jumps by more than ``spike_nats``;
3. after ``observe_steps`` steps, builds the update's state, asks the learner, and
   adjusts the running edit (loss weights, learning rate, modules kept).

When the attempt ends, :meth:`MetaController.finish` scores it (the reward), stores
the (state, plan, outcome) record, moves the meta-initialisation towards an accepted
edit, retrains the learner on the replay buffer as a new meta version, and logs the
meta dynamics to TensorBoard. :meth:`MetaController.repair` says how a failed
attempt is retried, or that repairs are exhausted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmha.config import MetaConfig
from dmha.errors import LossSpike
from dmha.learning.editor import Adjustment, EditResult
from dmha.learning.meta.learner import DELTAS, Decision, MetaCausalLearner, PlanAdjuster
from dmha.learning.meta.repair import Repair, repair_plan
from dmha.learning.meta.reptile import MetaInit
from dmha.learning.meta.state import StepObservation, UpdateState, similar_outcomes
from dmha.learning.meta.store import MetaRecord, MetaStore
from dmha.learning.meta.training import reward, train_learner
from dmha.learning.meta.utility import goodness, utility_entropy
from dmha.learning.plan import UpdatePlan

__all__ = ["AttemptHook", "MetaController"]

log = logging.getLogger(__name__)


@dataclass
class AttemptHook:
    """The editor's hook for one attempt (see the module docstring)."""

    controller: MetaController
    plan: UpdatePlan
    fixed: UpdatePlan
    text: str
    attempt: int
    n_items: int
    n_replay: int
    repair: bool
    observed: list[StepObservation] = field(default_factory=list)
    state: UpdateState | None = None
    decision: Decision | None = None
    goodness: list[float] = field(default_factory=list)

    def initial(self, slot: int, a_shape: torch.Size, b_shape: torch.Size) -> dict[str, torch.Tensor] | None:
        """Meta-initialised factors (never in repair mode: θ is reset there)."""
        if self.repair:
            return None
        return self.controller.init.initial(slot, a_shape, b_shape)

    def observe(self, obs: StepObservation, losses: Sequence[float], key_share: float) -> Adjustment | None:
        """Spike check every step; the learner's adjustment after ``observe_steps``.

        Raises:
            LossSpike: the loss rose by more than ``spike_nats`` in one step.
        """
        cfg = self.controller.cfg
        if len(losses) >= 2 and losses[-1] - losses[-2] > cfg.spike_nats:
            raise LossSpike(obs.step, losses[-1], losses[-1] - losses[-2])
        self.observed.append(obs)
        if obs.step != cfg.observe_steps:
            return None
        self.state = self._state(key_share)
        self.decision = self.controller.decide(self.state, self.repair)
        layers = list(self.plan.edit_layers)
        u = torch.tensor([self.decision.utilities[i] for i in layers])
        g_out = torch.tensor([sum(o.grad_out.get(i, 0.0) for o in self.observed) for i in layers])
        g_w = torch.tensor([sum(o.grad_w.get(i, 0.0) for o in self.observed) for i in layers])
        self.goodness = goodness(u, g_out, g_w).tolist()
        log.info("meta-learner (attempt %d): %s", self.attempt, self.decision.reason)
        return Adjustment(self.decision.apply(self.plan), self.decision.active)

    def _state(self, key_share: float) -> UpdateState:
        similar = similar_outcomes(self.text, self.controller.history())
        return UpdateState.build(
            self.observed, self.plan.edit_layers, key_share, similar, self.n_items, self.n_replay, self.attempt
        )

    def final_state(self, key_share: float) -> UpdateState:
        """The state the learner saw, or (when the edit ended before it was asked) the state so far."""
        if self.state is None:
            self.state = self._state(key_share)
        return self.state


class MetaController:
    """The meta-learner of one deployment (one per training worker).

    Args:
        cfg: the meta config.
        root: the meta registry folder (``<registry>/meta``).
        log_dir: where TensorBoard event files go (None = no TensorBoard).
        seed: seeds exploration.
    """

    def __init__(self, cfg: MetaConfig, root: Path, log_dir: Path | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.store = MetaStore(root)
        self.learner, self.learner_version = self.store.load_learner()
        self.adjuster = PlanAdjuster(cfg, seed)
        self.init = MetaInit.load(self.store.init_path, cfg.meta_init, cfg.meta_step)
        self._log_dir = log_dir
        self._writer: Any = None
        self._lock = threading.Lock()
        self._history: list[tuple[str, bool, float]] = [
            (r.text, r.outcome == "deployed", _step_share(r.figures)) for r in self.store.records(cfg.replay_capacity)
        ]
        self._events = len(self._history)
        if self.learner_version:
            log.info("meta-learner %s loaded (%d records)", self.learner_version, len(self._history))

    @property
    def trained(self) -> bool:
        """True once a learner version exists (before: the fixed plan, no exploration)."""
        return self.learner_version is not None

    def history(self) -> list[tuple[str, bool, float]]:
        """``(input, deployed, step share)`` of past attempts (for similarity)."""
        with self._lock:
            return list(self._history)

    def decide(self, state: UpdateState, repair: bool) -> Decision:
        """The learner's decision for a state (bounded, smoothed)."""
        with self._lock:
            return self.adjuster.decide(self.learner, state, explore=self.trained, repair=repair)

    def attempt(
        self, text: str, plan: UpdatePlan, fixed: UpdatePlan, attempt: int, n_items: int, n_replay: int
    ) -> AttemptHook:
        """The hook for one attempt.

        Args:
            text: the feedback input.
            plan: the attempt's plan (a repaired one for ``attempt`` > 0).
            fixed: the deployment's fixed plan (what the learner's changes are relative to).
            attempt: 0 = first try, > 0 = repair.
            n_items: feedback items.
            n_replay: replayed items.
        """
        return AttemptHook(self, plan, fixed, text, attempt, n_items, n_replay, repair=attempt > 0)

    def repair(
        self, failed: UpdatePlan, fixed: UpdatePlan, trigger: str, reasons: Sequence[str], attempt: int
    ) -> Repair | None:
        """How to retry, or None when ``max_repairs`` are spent.

        Args:
            failed: the plan that failed.
            fixed: the deployment's fixed plan.
            trigger: ``diverged``, ``loss spike`` or ``gate``.
            reasons: what failed.
            attempt: 1-based number of the repair being asked for.
        """
        if attempt > self.cfg.max_repairs:
            return None
        return repair_plan(failed, fixed, trigger, reasons, attempt)

    def finish(
        self,
        hook: AttemptHook,
        job_id: str,
        outcome: str,
        result: EditResult | None,
        metrics: dict[str, float],
        repair: Repair | None = None,
        learn: bool = True,
    ) -> MetaRecord:
        """Record an attempt, learn from it, and log the meta dynamics.

        Args:
            hook: the attempt's hook.
            job_id: the job.
            outcome: ``deployed``, ``rejected`` or ``failed``.
            result: the edit (None when it failed before producing one).
            metrics: the job's metrics so far (gate figures when it got that far).
            repair: the repair this attempt ran under (None for a first try).
            learn: retrain the learner now; False leaves it to a later :meth:`learn`
                (the worker records a deployed update before announcing it, and
                trains the learner after, off the correction's path).

        Returns:
            The stored record.
        """
        key_share = float(metrics.get("key_null_share", 0.0))
        state = hook.final_state(key_share)
        decision = hook.decision
        action = dict(decision.deltas) if decision is not None else dict.fromkeys(DELTAS, 0.0)
        # The outcome is credited to the whole change from the fixed plan: a repair's
        # own changes and the learner's deltas on top of them.
        for name, knob in (
            ("d_causal", "lambda_causal"),
            ("d_locality", "lambda_locality"),
            ("d_theta", "learning_rate"),
        ):
            action[name] += _log_ratio(getattr(hook.plan, knob), getattr(hook.fixed, knob))
        losses = result.losses if result is not None else [o.loss for o in hook.observed]
        loss_last = losses[-1] if losses else float("nan")
        causal_last = result.parts.get("causal", float("nan")) if result is not None else float("nan")
        flops = result.flops if result is not None else sum(o.flops for o in hook.observed)
        first = hook.observed[0].flops if hook.observed else 0.0
        n_steps = len(losses)
        full = first * n_steps
        saved = 1.0 - flops / full if full > 0 else 0.0
        r = reward(outcome == "deployed", loss_last, causal_last, saved, self.cfg)
        used = result.plan if result is not None and result.plan is not None else hook.plan
        figures = {
            "lambda_causal": used.lambda_causal,
            "lambda_locality": used.lambda_locality,
            "learning_rate": used.learning_rate,
            "loss_last": loss_last,
            "causal_last": causal_last,
            "flops": flops,
            "flops_full": full,
            "flops_reduction": saved,
            "steps": float(n_steps),
            "step_budget": float(hook.plan.steps),
            **{k: float(v) for k, v in metrics.items() if k in _GATE_FIGURES},
        }
        mechanisms = {str(k): v for k, v in (result.mechanisms if result is not None else {}).items()}
        record = MetaRecord(
            job_id,
            hook.attempt,
            hook.text,
            state.to_dict(),
            action,
            list(hook.goodness),
            outcome,
            r,
            {k: (v if math.isfinite(v) else 0.0) for k, v in figures.items()},
            mechanisms,
            repair.reason if repair is not None else "",
        )
        self.store.append(record)
        with self._lock:
            self._history.append((hook.text, outcome == "deployed", _step_share(record.figures)))
            self._history = self._history[-self.cfg.replay_capacity :]
        if outcome == "deployed" and result is not None:
            # Read-modify-write of the shared Φ: other workers' updates are kept.
            self.init = self.store.update_init(self.cfg.meta_init, self.cfg.meta_step, result.factors, result.grads)
        if learn:
            self.learn()
        self._log(record, decision)
        return record

    def learn(self) -> None:
        """Retrain the learner on the stored records (a no-op below ``min_records``)."""
        records = self.store.records(self.cfg.replay_capacity)
        if len(records) < self.cfg.min_records:
            return
        version = self.store.next_version()
        learner = MetaCausalLearner()
        learner.load_state_dict(self.learner.state_dict())
        t0 = time.monotonic()
        info = train_learner(learner, records, self.cfg, version, seed=len(records))
        self._scalar("meta/train_seconds", time.monotonic() - t0)
        info = self.store.save_learner(learner, info)
        with self._lock:
            self.learner, self.learner_version = learner, info.version
        self._scalar("meta/train_loss", info.loss)
        self._scalar("meta/causal_stability", info.causal_stability)

    def _log(self, record: MetaRecord, decision: Decision | None) -> None:
        self._events += 1
        self._scalar("update/reward", record.reward)
        self._scalar("update/deployed", 1.0 if record.outcome == "deployed" else 0.0)
        self._scalar("update/flops", record.figures.get("flops", 0.0))
        self._scalar("update/steps", record.figures.get("steps", 0.0))
        for name, x in record.action.items():
            self._scalar(f"plan/{name}", x)
        for name in ("lambda_causal", "lambda_locality", "learning_rate"):
            self._scalar(f"plan/{name}", record.figures.get(name, 0.0))
        if decision is not None and decision.utilities:
            u = torch.tensor(list(decision.utilities.values()))
            self._scalar("utility/entropy_bits", utility_entropy(u))
            for layer, value in decision.utilities.items():
                self._scalar(f"utility/layer_{layer}", value)

    def _scalar(self, tag: str, value: float) -> None:
        if self._log_dir is None:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the registry keeps the figures anyway
                log.warning("tensorboard is not installed; meta dynamics are kept in the registry only")
                self._log_dir = None
                return
            self._writer = SummaryWriter(str(self._log_dir))
        self._writer.add_scalar(tag, value, self._events)
        self._writer.flush()

    def import_insights(self, doc: Any) -> int:
        """Add another deployment's records (see :meth:`MetaStore.import_insights`).

        Imported records join the similarity history at once.

        Raises:
            InvalidArgument: the document is malformed (the field is named).
        """
        added = self.store.import_insights(doc)
        if added:
            records = self.store.records(self.cfg.replay_capacity)
            with self._lock:
                self._history = [(r.text, r.outcome == "deployed", _step_share(r.figures)) for r in records]
        return added

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_GATE_FIGURES = frozenset(
    ["efficacy", "generalisation", "retention", "locality", "kl_mean", "kl_prompt_max", "perplexity_increase"]
)


def _log_ratio(after: float, before: float) -> float:
    return math.log(after / before) if after > 0 and before > 0 else 0.0


def _step_share(figures: dict[str, float]) -> float:
    budget = figures.get("step_budget", 0.0)
    return figures.get("steps", 0.0) / budget if budget else 0.5
