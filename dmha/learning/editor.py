"""One knowledge edit: a low-rank change of ``mlp.down_proj`` confined to a null space.

The live model is only read: it is deep-copied, the copy's ``down_proj`` of the
plan's layers is wrapped in :class:`NullSpaceDelta`, and only the wrapper's two small
factors train. The change a wrapper can make is

    ΔW = scale · B · A′ · Uᵀ        (U: the layer's editable basis, ``[d_ff, k]``)

so ``ΔW k = 0`` for every key ``k`` orthogonal to ``U``: the preserved corpus's keys
(almost), every earlier accepted edit's keys, and the shared prompt prefix's keys
(exactly). Where it acts is decided by :mod:`dmha.learning.nullspace`; what it learns
by :class:`~dmha.learning.objective.Objective` (task CE, the causal KL that carries
paraphrases, and the locality KL). The result is a *cumulative delta* from the base
weights, so a version is rebuilt exactly (:func:`~dmha.learning.adapters.apply_delta`)
whatever happened before it: a dense ``D`` per edited matrix (``W_base + D``), or, when
the plan's ``gate_margin`` is set, one more key-gated block per layer
(:mod:`dmha.learning.gated`), which acts only on tokens whose key is the fact's.

Measured on the 135M default model, see BENCHMARKS.md ("Learning that lands").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmha.errors import LearningError, TrainingDiverged
from dmha.learning.adapters import NullSpaceDelta, apply_delta, candidate_copy, delta_name, reaches
from dmha.learning.exposure import RetainExposure, expose, most_exposed, most_exposed_known, shares_in
from dmha.learning.feedback import FeedbackItem
from dmha.learning.gated import append_edit, dense_names, gate_thresholds, token_shares
from dmha.learning.meta.state import StepObservation
from dmha.learning.nullspace import KeyStats, collect_keys
from dmha.learning.objective import Objective, build_retain_set
from dmha.learning.plan import UpdatePlan
from dmha.learning.precision import training_copy
from dmha.learning.prompting import ChatFormat, Sequence

__all__ = [
    "Adjustment",
    "EditHook",
    "EditResult",
    "EditSpace",
    "Editor",
    "NullSpaceDelta",
    "apply_delta",
    "delta_name",
]

log = logging.getLogger(__name__)

# A gated edit's threshold is at least this times the largest share any token of the
# already learned feedback has in its directions (a little headroom for rounding and
# for the answer as served, which may differ from the taught one in a few tokens).
_ACCEPTED_HEADROOM = 1.1

Progress = Callable[[int, int, float], None]
"""``progress(step, steps, loss)`` after each optimisation step (1-based step)."""


@dataclass(frozen=True)
class Adjustment:
    """A change to a running edit, decided after its first steps.

    Attributes:
        plan: the plan for the remaining steps (its loss weights and learning rate
            take effect at once).
        active: the edit layers that keep training; the others' changes are dropped.
    """

    plan: UpdatePlan
    active: tuple[int, ...]


class EditHook(Protocol):
    """Who watches and steers an edit (the causal meta-learner)."""

    def initial(self, slot: int, a_shape: torch.Size, b_shape: torch.Size) -> dict[str, torch.Tensor] | None:
        """Initial factors (``"a"`` and/or ``"b"``) for the module in ``slot``, or None (default init)."""
        ...

    def observe(self, obs: StepObservation, losses: Seq[float], key_share: float) -> Adjustment | None:
        """Called after each step's backward pass, before the optimiser step.

        Raises:
            TrainingDiverged: the hook judged the run diverged (e.g. a loss spike).
        """
        ...


@dataclass
class EditResult:
    """What an edit produced.

    Attributes:
        model: the candidate (a new object; the live model is untouched).
        delta: name -> cumulative delta from the base weights (float32, CPU): dense
            matrices and/or gated blocks (:mod:`dmha.learning.gated`).
        keys: layer -> the edit's own keys (added to the preserved statistics once
            the edit is accepted).
        losses: total loss per step.
        parts: the last step's loss terms.
        metrics: ``key_null_share`` (how much of the fact's key the editable subspace
            holds), ``delta_norm``, ``steps``.
        seconds: wall time.
        observations: every step as the hook saw it (losses, terms, gradient norms, FLOPs).
        plan: the plan in force at the end (after any adjustment).
        active: the edit layers whose change the result holds.
        factors: slot -> final ``{"a", "b"}`` of each active module (meta-initialisation).
        grads: slot -> their gradient at the last step (first-order MAML).
        mechanisms: layer -> share of the edit's effect on the fact's keys.
        flops: floating-point operations of all steps (counted, not estimated).
    """

    model: Any
    delta: dict[str, torch.Tensor]
    keys: dict[int, torch.Tensor]
    losses: list[float]
    parts: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    observations: list[StepObservation] = field(default_factory=list)
    plan: UpdatePlan | None = None
    active: tuple[int, ...] = ()
    factors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    grads: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    mechanisms: dict[int, float] = field(default_factory=dict)
    flops: float = 0.0


@dataclass(frozen=True)
class EditSpace:
    """Where the edits of one live version may act (:meth:`Editor.space`).

    Attributes:
        layers: the edit layers it covers.
        null_threshold: the relative eigenvalue threshold it was cut at.
        bases: layer -> ``[d_ff, k]`` orthonormal editable directions.
        whitening: layer -> ``float64 [d_ff, k]`` ``U Q Λ^-1/2``: the preserved
            covariance restricted to the basis, whitened.
        exposure: the retain sequences' keys in the basis, when given to
            :meth:`Editor.space`.
        accepted: the accepted feedback's keys in the basis (question and answer),
            when given: a gated edit's gate stays shut on them.
        accepted_inputs: the questions of ``accepted``, in order (normalised).
    """

    layers: tuple[int, ...]
    null_threshold: float
    bases: dict[int, torch.Tensor]
    whitening: dict[int, torch.Tensor]
    exposure: RetainExposure | None = None
    accepted: RetainExposure | None = None
    accepted_inputs: tuple[str, ...] = ()

    def fits(self, plan: UpdatePlan) -> bool:
        """Whether this space is the one ``plan`` asks for."""
        return self.layers == tuple(plan.edit_layers) and self.null_threshold == plan.null_threshold


class Editor:
    """Makes edits for one chat format.

    Args:
        fmt: prompt rendering, as served.
        grad_clip: gradient-norm clip.
        precision: matmul precision of the training passes (``auto``: bfloat16 where
            the device computes it natively, else float32); see :func:`training_copy`.
    """

    def __init__(self, fmt: ChatFormat, grad_clip: float = 1.0, precision: str = "float32") -> None:
        self.fmt = fmt
        self.grad_clip = grad_clip
        self.precision = precision
        self.prefix: tuple[int, ...] = fmt.shared_prefix()
        """Tokens every served prompt starts with (system message, user header)."""

    def space(
        self,
        model: Any,
        stats: KeyStats,
        plan: UpdatePlan,
        retain: Seq[Sequence] | None = None,
        accepted: Seq[FeedbackItem] = (),
    ) -> EditSpace:
        """Where edits of this live version may act (the same for all its edits).

        Per edit layer: the editable subspace minus the shared prefix's keys, and the
        whitening of the preserved covariance inside it (for :func:`_fact_directions`).
        Worth computing once per live version (a few seconds of eigendecompositions)
        and passing to every :meth:`train` call.

        Args:
            model: the live model (for the prefix keys).
            stats: preserved-key statistics (corpus plus accepted edits).
            plan: layers and threshold.
            retain: the retain sequences whose keys the space keeps (see
                :class:`RetainExposure`); None = collected by each edit.
            accepted: the feedback the live version learned (its gated edits then
                keep out of their tokens, see :meth:`_thresholds`).

        Returns:
            The space.
        """
        prefix_keys = collect_keys(model, [Sequence(self.prefix)], plan.edit_layers) if self.prefix else {}
        bases: dict[int, torch.Tensor] = {}
        whitening: dict[int, torch.Tensor] = {}
        for layer in plan.edit_layers:
            u = stats.basis(layer, plan.null_threshold)
            pk = prefix_keys.get(layer)
            if pk is not None and len(pk) and u.shape[1]:
                # The prefix's keys are the same in every prompt: remove them exactly.
                _, sv, vh = torch.linalg.svd(pk, full_matrices=False)
                p = vh[sv > sv[0] * 1e-6]
                u = u - p.T @ (p @ u)
                q, r = torch.linalg.qr(u)
                u = q[:, r.diagonal().abs() > 1e-4]
            bases[layer] = u.contiguous()
            if u.shape[1]:
                ud = u.double()
                evals, q = torch.linalg.eigh(ud.T @ stats.covariance(layer).double() @ ud)
                scale = evals.clamp(min=float(evals.max()) * 1e-9).rsqrt()
                whitening[layer] = (ud @ q) * scale
        skip = len(self.prefix)
        exposure = expose(model, retain, bases, skip) if retain else None
        seqs = [self.fmt.sequence(it.input, it.target) for it in accepted]
        known = expose(model, seqs, bases, skip) if seqs else None
        inputs = tuple(_norm(it.input) for it in accepted)
        return EditSpace(tuple(plan.edit_layers), plan.null_threshold, bases, whitening, exposure, known, inputs)

    def _thresholds(
        self,
        model: Any,
        space: EditSpace,
        bases: Mapping[int, torch.Tensor],
        keys: Mapping[int, torch.Tensor],
        plan: UpdatePlan,
        retain: Seq[Sequence] | None,
        items: Seq[FeedbackItem],
    ) -> dict[int, float]:
        """Gate thresholds of a gated edit (:func:`~dmha.learning.gated.gate_thresholds`).

        Generic text sets them (the retain keys, times the margin); so do the tokens of
        the feedback learned before (just above their largest share): measured over 57
        sequential edits, 10-23 % of the learned questions' tokens opened several edits'
        gates (facts of one template share words generic text lacks), and a later
        edit acting there undid earlier facts (retained 0.82 after 50). A gate shut on
        every token of an earlier question and answer leaves that answer bitwise as it
        was. An item taught again (the same question) is not protected from its correction.
        """
        if not retain:
            raise LearningError("a gated edit needs retain prompts to set its gate")
        exposure = space.exposure
        generic_max: dict[int, float] = {}
        if exposure is not None and exposure.seqs == tuple(retain):
            # The exposure keeps keys as coordinates in the space's basis; the edit's
            # directions lie in that basis, so shares need only the coordinates.
            generic_max = {i: float(shares_in(exposure, space.bases, i, u).max()) for i, u in bases.items()}
        else:
            generic = collect_keys(model, list(retain), plan.edit_layers, skip=len(self.prefix))
            generic_max = {i: float(token_shares(generic[i], u).max()) for i, u in bases.items() if len(generic[i])}
        floors: dict[int, float] = {}
        known = space.accepted
        if known is not None:
            asked = {_norm(it.input) for it in items}
            keep = torch.cat(
                [torch.full((n,), q not in asked) for q, n in zip(space.accepted_inputs, known.lengths, strict=True)]
            )
            if keep.any():
                for i, u in bases.items():
                    floors[i] = _ACCEPTED_HEADROOM * float(shares_in(known, space.bases, i, u)[keep].max())
        return gate_thresholds(generic_max, keys, bases, plan.gate_margin, floors)

    def fact_keys(self, model: Any, items: Seq[FeedbackItem], layers: Seq[int]) -> dict[int, torch.Tensor]:
        """The keys of the feedback's own tokens (its prefix left out) at ``layers``."""
        seqs = [self.fmt.sequence(it.input, it.target) for it in items]
        return collect_keys(model, seqs, layers, skip=len(self.prefix))

    def train(
        self,
        live_model: Any,
        items: Seq[FeedbackItem],
        plan: UpdatePlan,
        stats: KeyStats,
        base_weights: Mapping[str, torch.Tensor],
        live_delta: Mapping[str, torch.Tensor],
        retain: Seq[Sequence] | None = None,
        replay: Seq[FeedbackItem] = (),
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
        hook: EditHook | None = None,
        space: EditSpace | None = None,
    ) -> EditResult:
        """Learn ``items`` into a copy of ``live_model``.

        Args:
            live_model: the serving model (``W_base + live_delta``); only read.
            items: feedback to learn (at least one).
            plan: how.
            stats: the preserved-key statistics of the live version.
            base_weights: name -> base weight of every matrix an edit may touch.
            live_delta: name -> the live version's cumulative delta.
            retain: retain sequences (prompt + fixed continuation) for the locality
                term; the ``retain_per_step`` the edit would read most are held still.
            replay: earlier accepted feedback, replayed through the task loss.
            progress: called after each step.
            should_stop: polled each step; True aborts with :class:`InterruptedError`.
            deadline: ``time.monotonic()`` after which no further step starts (the
                Submit -> live budget); the edit made so far goes to the gate.
            hook: watches every step and may adjust the plan once (the meta-learner).
            space: :meth:`space` of this live version and ``stats`` when already
                computed (recomputed when it does not fit the plan).

        Returns:
            The candidate, its cumulative delta and the edit's keys.

        Raises:
            LearningError: the fact's key has (almost) no component in the
                editable subspace, so no local edit can carry it.
            TrainingDiverged: the loss became NaN or infinite (or the hook saw a spike).
            ValueError: no items.
            InterruptedError: ``should_stop`` returned True.
        """
        if not items:
            raise ValueError("an update needs at least one feedback item")
        started = time.monotonic()
        gen = torch.Generator().manual_seed(plan.seed)
        torch.manual_seed(plan.seed)
        # ``model`` becomes the candidate (live weights + delta, served precision);
        # ``work`` is what trains: the same model, in bfloat16 where that is native.
        # Keys and subspaces are always read from ``model``.
        model = candidate_copy(live_model, {*base_weights, *dense_names(live_delta)})
        work = training_copy(model, self.precision)
        objective = Objective(work, self.fmt, items, replay, plan, None)
        if space is None or not space.fits(plan):
            space = self.space(model, stats, plan)
        bases = dict(space.bases)
        # The fact's keys: its question and the training paraphrases, with the answer.
        # (Question-only keys measured worse: kl_prompt_max 0.15-0.18 vs 0.10 on the
        # same tuning fact; the answer tokens carry the subject too.)
        fact_seqs = list(dict.fromkeys(t.seq for t in (*objective.task[: len(items)], *objective.causal)))
        keys = collect_keys(model, fact_seqs, plan.edit_layers, skip=len(self.prefix))
        share = _key_share(keys, bases)
        if share < plan.min_key_share:
            raise LearningError(
                f"the feedback's key has {share:.1%} of its energy in the editable subspace "
                f"(< {plan.min_key_share:.1%}): no edit can carry it without touching other answers"
            )
        if plan.subspace_rank > 0:
            bases = {
                i: _fact_directions(keys[i], u, space.whitening.get(i), plan.subspace_rank) for i, u in bases.items()
            }
        if retain and plan.lambda_locality > 0 and plan.retain_per_step > 0:
            # Hold still the retain prompts the change would read most: those whose
            # keys lie most in its subspace (a question about another country's capital
            # for a made-up country's capital), rather than a random sample. Only
            # those are scored by the live model: the teacher costs a few prompts, not all.
            # (Ranked with the training copy: an ordering needs no float32 keys.)
            if space.exposure is not None and space.exposure.seqs == tuple(retain):
                chosen = most_exposed_known(space.exposure, space.bases, bases, plan.retain_per_step)
            else:
                chosen = most_exposed(work, list(retain), bases, plan.retain_per_step, len(self.prefix))
            objective.hold(build_retain_set(work, chosen))
        thresholds: dict[int, float] = {}
        if plan.gate_margin > 0:
            try:
                thresholds = self._thresholds(model, space, bases, keys, plan, retain, items)
            except LearningError as exc:
                # Merged, as without gating: the gate decides whether that is local enough.
                log.info("edit merged, not gated: %s", exc)
        wrappers: dict[int, NullSpaceDelta] = {}
        for slot, layer in enumerate(plan.edit_layers):
            if thresholds and layer not in thresholds:
                continue  # a gated edit where no token of the fact would open the gate
            mlp = work.model.layers[layer].mlp
            w = NullSpaceDelta(mlp.down_proj, bases[layer], plan.rank, plan.scale, gen, thresholds.get(layer))
            init = hook.initial(slot, w.a.shape, w.b.shape) if hook is not None else None
            if init is not None:
                with torch.no_grad():
                    for name, factor in init.items():
                        getattr(w, name).copy_(factor.to(torch.float32))
            wrappers[layer] = w
            mlp.down_proj = w
        dropped = 0
        if thresholds:
            # Gated: a sequence on which no gate opens keeps exactly the live output
            # whatever the change, so it is not run at every step.
            dropped = objective.keep_reached(functools.partial(reaches, work, list(wrappers.values())))
            log.info("gated edit: %d training sequences out of its reach dropped", dropped)
        params = [p for w in wrappers.values() for p in (w.a, w.b)]
        opt = torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=0.0)
        losses: list[float] = []
        parts: dict[str, float] = {}
        observations: list[StepObservation] = []
        last_grads: dict[int, dict[str, torch.Tensor]] = {}
        flops = 0.0
        # Counted, not estimated (the meta-learner's reward and the utility gates'
        # savings are judged by these figures), but only when the step's work can
        # have changed: every step runs the same sequences through the same modules
        # until an adjustment drops some, and counting costs ~10 % of a step.
        measured: tuple[float, float] | None = None
        for step in range(1, plan.steps + 1):
            if should_stop is not None and should_stop():
                raise InterruptedError("update cancelled")
            if deadline is not None and step > 1 and time.monotonic() > deadline:
                log.info("edit stopped at step %d: the time budget is spent", step)
                break
            fwd_counter = FlopCounterMode(display=False) if measured is None else contextlib.nullcontext()
            with fwd_counter:
                total, parts = objective.loss(work)
            value = total.item()
            if not math.isfinite(value):
                raise TrainingDiverged(step, value)
            stop = plan.stop_margin > 0 and parts["margin"] >= plan.stop_margin
            bwd_counter = FlopCounterMode(display=False) if measured is None and not stop else contextlib.nullcontext()
            if not stop:
                opt.zero_grad(set_to_none=True)
                with bwd_counter:
                    total.backward()
            if measured is None:
                measured = (_counted(fwd_counter), _counted(bwd_counter))
            step_flops = measured[0] + (0.0 if stop else measured[1])
            flops += step_flops
            losses.append(value)
            if stop:
                # Every target already wins by a margin: more steps only move the
                # model further from the live one.
                if progress is not None:
                    progress(step, step, value)
                break
            norms = {layer: w.grad_norms() for layer, w in wrappers.items()}
            obs = StepObservation(
                step,
                value,
                dict(parts),
                {i: n[0] for i, n in norms.items()},
                {i: n[1] for i, n in norms.items()},
                step_flops,
            )
            observations.append(obs)
            adjust = hook.observe(obs, losses, share) if hook is not None else None
            if adjust is not None:
                plan = adjust.plan
                objective.plan = plan
                for group in opt.param_groups:
                    group["lr"] = plan.learning_rate
                measured = None  # the next step's work differs: count it again
                for layer in [i for i in wrappers if i not in adjust.active]:
                    # A skipped module: its change is dropped, it costs no more
                    # forward or backward work, and AdamW skips parameters without grad.
                    w = wrappers.pop(layer)
                    work.model.layers[layer].mlp.down_proj = w.base
                    w.a.grad = w.b.grad = None
                    w.a.requires_grad_(False)
                    w.b.requires_grad_(False)
                if not wrappers:
                    raise LearningError("the meta-learner left no edit module active")
            torch.nn.utils.clip_grad_norm_([p for w in wrappers.values() for p in (w.a, w.b)], self.grad_clip)
            last_grads = {
                layer: {"a": w.a.grad.detach().clone(), "b": w.b.grad.detach().clone()}
                for layer, w in wrappers.items()
                if w.a.grad is not None and w.b.grad is not None
            }
            opt.step()
            for w in wrappers.values():
                w.bound(plan.max_delta_norm)
            if progress is not None:
                progress(step, plan.steps, value)
        delta = {name: d.detach().float().cpu().clone() for name, d in live_delta.items()}
        norms_f = []
        effects: dict[int, float] = {}
        slots = {layer: k for k, layer in enumerate(plan.edit_layers)}
        factors = {}
        grads = {}
        for layer, w in wrappers.items():
            change = w.delta().cpu()
            norm = float(torch.linalg.matrix_norm(change))
            if not math.isfinite(norm):
                # Finite entries can still be absurd: RMSNorm hides a 1e30 residual from
                # the loss, so the size of the change itself is checked.
                raise TrainingDiverged(len(losses), norm)
            norms_f.append(norm)
            # Which module carried the fact: the size of its change on the fact's keys.
            effects[layer] = (
                float(torch.linalg.matrix_norm(keys[layer].float() @ change.T)) if len(keys[layer]) else 0.0
            )
            factors[slots[layer]] = {"a": w.a.detach().float().cpu().clone(), "b": w.b.detach().float().cpu().clone()}
            if layer in last_grads:
                grads[slots[layer]] = {k: v.float().cpu() for k, v in last_grads[layer].items()}
            if w.threshold is not None:
                a, b = w.gated_factors()
                append_edit(delta, layer, w.basis.cpu(), w.threshold, a, b)
            else:
                name = delta_name(layer)
                delta[name] = delta[name] + change if name in delta else change
            work.model.layers[layer].mlp.down_proj = w.base
        del work
        apply_delta(model, base_weights, delta)
        model.eval()
        seconds = time.monotonic() - started
        metrics = {
            "key_null_share": share,
            "delta_norm": max(norms_f, default=0.0),
            "steps": float(len(losses)),
            "flops": flops,
            "active_layers": float(len(wrappers)),
            "gated_layers": float(sum(w.threshold is not None for w in wrappers.values())),
            "unreached_dropped": float(dropped),
        }
        log.info(
            "edit trained in %.1fs over %d steps: loss %.3f -> %.3f %s",
            seconds,
            len(losses),
            losses[0],
            losses[-1],
            parts,
        )
        total_effect = sum(effects.values()) or 1.0
        return EditResult(
            model,
            delta,
            keys,
            losses,
            parts,
            metrics,
            seconds,
            observations,
            plan,
            tuple(sorted(wrappers)),
            factors,
            grads,
            {i: e / total_effect for i, e in effects.items()},
            flops,
        )


def _counted(counter: Any) -> float:
    """FLOPs a :class:`FlopCounterMode` saw (0 for the null context)."""
    return float(counter.get_total_flops()) if isinstance(counter, FlopCounterMode) else 0.0


def _key_share(keys: Mapping[int, torch.Tensor], bases: Mapping[int, torch.Tensor]) -> float:
    """Largest share of a fact token's key energy inside its layer's editable subspace."""
    best = 0.0
    for layer, k in keys.items():
        u = bases[layer]
        if not len(k) or not u.shape[1]:
            continue
        inside = (k @ u).pow(2).sum(-1)
        best = max(best, float((inside / k.pow(2).sum(-1).clamp(min=1e-12)).max()))
    return best


def _fact_directions(keys: torch.Tensor, basis: torch.Tensor, white: torch.Tensor | None, rank: int) -> torch.Tensor:
    """The ``rank`` directions of ``basis`` where the fact's keys stand out most from generic ones.

    Maximises ``uᵀ Kᵀ K u / uᵀ C0 u`` over ``u`` in the span of ``basis`` (a generalised
    eigenproblem, solved by whitening with ``C0`` restricted to the span: ``white`` =
    :attr:`EditSpace.whitening`): tokens the corpus is full of (relation words such
    as "capital of") have large generic variance and are discounted, so the change
    keys on what is specific to this fact (its subject), and prompts that only share
    the relation stay untouched.
    """
    if not len(keys) or not basis.shape[1] or white is None:
        return basis
    _, _, vh = torch.linalg.svd(keys.double() @ white, full_matrices=False)
    out, _ = torch.linalg.qr(white @ vh[:rank].T)
    return out.float().contiguous()


def _norm(question: str) -> str:
    """A question as compared for "taught again" (case and spacing ignored)."""
    return " ".join(question.casefold().split())
