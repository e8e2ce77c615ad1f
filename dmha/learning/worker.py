"""The training worker: takes queued jobs and turns them into live model versions.

One job = edit (a copy of the live model) -> gate -> register -> deploy (eager) ->
retention -> freeze (the same version, swapped in TorchScript-frozen once checked).
Every artifact is written into a registry staging folder and registered only at the
end, and ``deploy`` is called only for a candidate that passed the gate: a process
killed at any point (even ``kill -9``) leaves the live model and the live
pointer as they were.

The base model's references (preserved-key statistics, gate probes, retain
sequences) are loaded from the disk cache or computed in the background as soon as
the worker starts, so the first job does not pay for them; the live version's state
(its delta and the keys of every edit it holds) is kept in memory and updated on
each deploy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmha.config import LearningConfig
from dmha.errors import DMHAError, FreezeError, LearningError, LossSpike, NotFound, TrainingDiverged
from dmha.learning.editor import EditHook, Editor, EditResult, EditSpace, delta_name
from dmha.learning.freeze_process import freeze_version
from dmha.learning.gate import Gate, GateThresholds, LiveProbe, probe_live
from dmha.learning.gated import dense_names
from dmha.learning.jobs import Job, JobStore
from dmha.learning.loading import load_delta, read_base_weights, save_delta
from dmha.learning.meta.controller import AttemptHook, MetaController
from dmha.learning.meta.repair import Repair
from dmha.learning.nullspace import KeyStats
from dmha.learning.plan import UpdatePlan
from dmha.learning.prompting import ChatFormat
from dmha.learning.references import References, ensure_references
from dmha.learning.registry import BASE_VERSION, Registry
from dmha.learning.steps import EagerStepModel
from dmha.llm.base import ModelHandle
from dmha.llm.engine import load_causal_lm
from dmha.process_resources import lower_thread_priority, trim

__all__ = ["LearningWorker", "PlanHook"]

log = logging.getLogger(__name__)
_Delta = dict[str, torch.Tensor]

PlanHook = Callable[[Job, UpdatePlan], UpdatePlan]
"""``plan_for(job, default_plan) -> plan``: where the causal meta-learner decides."""


@dataclass(frozen=True)
class _LiveState:
    """What the next edit of one live version starts from (computed once per version)."""

    version: str
    delta: dict[str, torch.Tensor]
    stats: KeyStats
    probe: LiveProbe
    spaces: dict[tuple[tuple[int, ...], float], EditSpace] = field(default_factory=dict, compare=False)
    """Memo of the edit spaces of this version (per edit layers and threshold)."""
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while a space is computed: a job asking for the space the post-deploy thread
    is computing waits for it instead of computing it a second time."""


class LearningWorker:
    """A background thread that runs training jobs one at a time.

    Args:
        cfg: the ``learning`` section of the config.
        jobs: the job store.
        registry: the version registry (its ``base_path`` is the base model folder).
        get_live: returns the live :class:`~dmha.llm.base.ModelHandle` (its
            ``torch_model`` and ``tokenizer`` are used; its ``version`` must be a
            registry id such as ``base``).
        deploy: the hot swap; called with the new handle only when the gate passed.
        system_prompt: the serving system message (``ModelConfig.system_prompt``).
        cache_dir: where the base model's references are cached.
        plan_for: optional hook choosing each job's starting plan.
        meta: the causal meta-learner (steers, repairs and learns from every update);
            None = the fixed plan, no repairs.
    """

    def __init__(
        self,
        cfg: LearningConfig,
        jobs: JobStore,
        registry: Registry,
        get_live: Callable[[], ModelHandle],
        deploy: Callable[[ModelHandle], None],
        system_prompt: str,
        cache_dir: Path,
        plan_for: PlanHook | None = None,
        meta: MetaController | None = None,
    ) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.registry = registry
        self._get_live = get_live
        self._deploy = deploy
        self._system_prompt = system_prompt
        self._cache_dir = Path(cache_dir)
        self._plan_for = plan_for
        self._meta = meta
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fmt: ChatFormat | None = None
        self._refs: References | None = None
        self._state: _LiveState | None = None
        self._base_weights: dict[str, torch.Tensor] = {}
        self._prepare_lock = threading.Lock()
        # Serialises swaps: the frozen module of version N must never replace version N+1.
        self._swap_lock = threading.Lock()
        self._post_deploy: threading.Thread | None = None
        workers = cfg.gate_workers
        self._gate_workers = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Settle jobs a previous process left behind, then start the thread.

        The thread first makes the base model's references ready (from the cache,
        or computed), then takes jobs.

        Raises:
            RedisUnavailable: Redis is down.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        self.jobs.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dmha-learning", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to stop (a running update is abandoned at its next step) and wait.

        A computation of the base references stops at its next batch (nothing is
        half-written: the cache file is replaced atomically).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        post = self._post_deploy
        if post is not None:
            post.join(timeout)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            # References (interruptible), then the live version's probe scores and edit
            # space: ready before the first correction arrives, not paid inside it.
            with self._prepare_lock:
                self._references(self._get_live())
            if not self._stop.is_set():
                self.prepare()
        except InterruptedError:
            return  # stopped while preparing
        except Exception:
            log.exception("learning worker: could not prepare the references; the first job will retry")
        while not self._stop.is_set():
            try:
                self.run_once(timeout=0.5)
            except DMHAError:
                # Redis hiccups are retried after a pause; bugs (any other error) are logged.
                log.warning("learning worker: backend error; retrying", exc_info=True)
                self._stop.wait(1.0)
            except Exception:
                log.exception("learning worker: unexpected error")
                self._stop.wait(1.0)

    # ------------------------------------------------------------- references

    def _format(self, live: ModelHandle) -> ChatFormat:
        if self._fmt is None or self._fmt.tokenizer is not live.tokenizer:
            self._fmt = ChatFormat(live.tokenizer, self._system_prompt)
        return self._fmt

    def prepare(self) -> None:
        """Make the base references and the live version's state ready (idempotent).

        Called by the thread at start, by each job (a no-op when ready) and after a
        rollback or promotion changed the live version.
        """
        self._live_state(self._get_live())

    def _references(self, live: ModelHandle) -> References:
        if self._refs is None:
            fmt = self._format(live)
            base_model = live.torch_model
            if live.version != BASE_VERSION:  # references are the base model's: load a fresh one
                param = next(live.torch_model.parameters())
                base_model = load_causal_lm(self.registry.base_path, param.dtype, param.device)
            self._refs = ensure_references(
                base_model,
                self.registry.base_path,
                fmt,
                self.cfg.edit_layers,
                self._cache_dir,
                progress=lambda m: log.info("learning references: %s", m),
                should_stop=self._stop.is_set,
            )
        return self._refs

    def _base_weight(self, names: list[str]) -> dict[str, torch.Tensor]:
        missing = [n for n in names if n not in self._base_weights]
        if missing:
            self._base_weights.update(read_base_weights(self.registry.base_path, missing))
        return {n: self._base_weights[n] for n in names}

    def _live_state(self, live: ModelHandle) -> _LiveState:
        # Serialised: a rollback (request thread) and a job (worker thread) may both ask.
        with self._prepare_lock:
            refs = self._references(live)
            state = self._state
            if state is not None and state.version == live.version:
                return state
            started = time.monotonic()
            delta: dict[str, torch.Tensor] = {}
            stats = refs.stats
            if live.version != BASE_VERSION:
                try:
                    version = self.registry.get(live.version)
                    delta = load_delta(version)
                    history = self.registry.feedback_history(live.version)
                except (NotFound, LearningError):
                    log.warning("live version %r unreadable; editing over it as base", live.version)
                    history = []
                if history:
                    # Earlier edits stay protected: their keys join the preserved set.
                    editor = Editor(self._format(live))
                    stats = stats.with_keys(editor.fact_keys(live.torch_model, history, self.cfg.edit_layers))
            self._state = self._scored(live, refs, delta, stats)
            self._warm(self._state, live.torch_model)
            log.info("learning state of %s ready in %.1fs", live.version, time.monotonic() - started)
            return self._state

    def _space(self, state: _LiveState, model: Any, plan: UpdatePlan) -> EditSpace:
        """The edit space of ``state``'s version for ``plan`` (computed once per version)."""
        key = (tuple(plan.edit_layers), plan.null_threshold)
        with state.lock:
            space = state.spaces.get(key)
            if space is None:
                # Both are set with the references, before any state exists.
                assert self._fmt is not None and self._refs is not None
                learned = []  # a live version outside the registry: edited over as base
                with contextlib.suppress(NotFound):
                    learned = self.registry.feedback_history(state.version)
                editor = Editor(self._fmt)
                space = state.spaces[key] = editor.space(model, state.stats, plan, self._refs.retain, learned)
        return space

    def _warm(self, state: _LiveState, model: Any) -> None:
        """Decompose the preserved statistics now (seconds), not in the next job."""
        self._space(state, model, UpdatePlan.from_config(self.cfg))

    def _scored(self, live: ModelHandle, refs: References, delta: _Delta, stats: KeyStats) -> _LiveState:
        # The live model's half of the gate: the same for every job until the next
        # deploy, so computed once (after a deploy the gate's own scores are reused).
        probe = probe_live(live.torch_model, refs.gate, self._gate_workers, self.cfg.edit_layers)
        return _LiveState(live.version, delta, stats, probe)

    # ------------------------------------------------------------- one job

    def run_once(self, timeout: float = 0.5) -> Job | None:
        """Take one queued job (waiting up to ``timeout``) and run it to a final state.

        Returns:
            The finished job, or None when the queue stayed empty.
        """
        job = self.jobs.claim(timeout)
        if job is None:
            return None
        try:
            return self.process(job)
        finally:
            trim()  # the job's gigabytes of tensors are free now: give them back

    def process(self, job: Job) -> Job:
        """Run one claimed job to ``deployed``, ``rejected`` or ``failed``.

        A diverged or rejected attempt is retried with a repaired plan while the
        meta-learner allows (``meta.max_repairs``); the live model is untouched
        until an attempt passes the gate.

        Returns:
            The job in its final state.
        """
        started = time.monotonic()
        live = self._get_live()
        fixed = UpdatePlan.from_config(self.cfg)
        plan = self._plan_for(job, fixed) if self._plan_for else fixed
        job = self.jobs.transition(job.job_id, "training", step=0, steps=plan.steps, plan=plan.to_dict())
        history: dict[str, float] = {}
        notes: list[str] = []
        repair: Repair | None = None
        attempt = 0
        while True:
            staging = self.registry.new_staging()
            hook = (
                self._meta.attempt(job.items[0].input, plan, fixed, attempt, len(job.items), 0) if self._meta else None
            )
            try:
                outcome = self._run(job, live, plan, staging, started, hook)
            except TrainingDiverged as exc:
                self.registry.discard(staging)
                trigger = "loss spike" if isinstance(exc, LossSpike) else "diverged"
                outcome = _Outcome("failed", None, {"diverged_step": float(exc.step)}, (str(exc),), trigger)
            except (LearningError, InterruptedError, NotFound, ValueError, RuntimeError, OSError) as exc:
                # Expected failures of an update (no room for the edit, full disk, out of
                # memory, a cancelled run): not repairable; the live model was never touched.
                self.registry.discard(staging)
                log.warning("job %s failed: %s", job.job_id, exc, exc_info=not isinstance(exc, LearningError))
                self._record(hook, job, "failed", None, {}, repair)
                return self.jobs.transition(
                    job.job_id, "failed", error=_with_notes(str(exc) or type(exc).__name__, notes)
                )
            except BaseException:
                # A bug or an outage: the job must not stay "running", but the error is re-raised
                # (and logged with its traceback by the loop), never turned into a verdict.
                self.registry.discard(staging)
                try:  # retried through a Redis outage: a job left "training" would never end
                    error = "internal error (see the server log)"
                    if self.jobs.settle(job.job_id, "failed", self.cfg.claim_idle_seconds, error=error) is None:
                        log.error("could not mark job %s failed: Redis stayed unavailable", job.job_id)
                except DMHAError:
                    log.exception("could not mark job %s failed", job.job_id)
                raise
            deployed = outcome.state == "deployed"
            # Recorded before the job turns ``deployed``: whoever sees the new version
            # finds its meta record (insights, mechanisms) already there.
            self._record(hook, job, outcome.state, outcome.result, outcome.metrics, repair, learn=not deployed)
            if deployed:
                assert outcome.publish is not None  # a deployed outcome carries its announcement
                done = outcome.publish(history, notes)
                if self._meta is not None:
                    try:
                        self._meta.learn()
                    except Exception:
                        log.exception("meta-learner: training failed (the job itself is unaffected)")
                return done
            for k, v in outcome.metrics.items():
                history[f"attempt{attempt + 1}/{k}"] = v
            note = f"attempt {attempt + 1} {outcome.trigger}: " + "; ".join(outcome.reasons)
            nxt = self._meta.repair(plan, fixed, outcome.trigger, outcome.reasons, attempt + 1) if self._meta else None
            if nxt is None:
                notes.append(note)
                if outcome.state == "rejected":
                    return self.jobs.transition(
                        job.job_id,
                        "rejected",
                        metrics={**outcome.metrics, **history},
                        reasons=[*outcome.reasons, *notes[:-1]],
                    )
                return self.jobs.transition(job.job_id, "failed", error=_with_notes(note, notes[:-1]), metrics=history)
            changes = ", ".join(f"{k} {a:g} -> {b:g}" for k, (a, b) in nxt.changes.items())
            notes.append(f"{note} -> repaired ({changes})")
            log.info("job %s: repair %d after %s: %s", job.job_id, nxt.attempt, outcome.trigger, changes)
            repair, plan, attempt = nxt, nxt.plan, attempt + 1
            job = self.jobs.transition(
                job.job_id, "training", step=0, steps=plan.steps, plan=plan.to_dict(), metrics=history
            )

    def _after_deploy(self, handle: ModelHandle, state: _LiveState, freeze: bool) -> None:
        """Freeze the new live version and prepare the next edit's space, off the job's path:
        in a thread, so the next job (often already queued) starts at once, on the other core."""
        previous = self._post_deploy

        def run() -> None:
            # One at a time, in deploy order, without making the deploying job wait.
            if previous is not None:
                previous.join()
            lower_thread_priority()
            try:
                # The next edit needs the space; serving is correct without the frozen
                # module (only slower), so the space comes first.
                self._warm(state, handle.torch_model)
                if freeze:
                    self._freeze_live(handle)
            except Exception:  # a background step must never take the worker down
                log.exception("after deploying %s: freezing or preparing failed", handle.version)
            trim()

        self._post_deploy = threading.Thread(target=run, name="dmha-post-deploy", daemon=True)
        self._post_deploy.start()

    def _frozen(self, model: Any, delta_path: Path | None, name: str) -> tuple[Any, Path] | None:
        """``model`` (base + the delta at ``delta_path``) frozen with TorchScript in a
        child process and checked against eager, written to a temporary cache file;
        None when freezing failed (logged: serve eagerly)."""
        tmp = self.registry.frozen_cache(f".{name}")
        dtype, cfg, base = next(model.parameters()).dtype, self.cfg, self.registry.base_path
        try:
            step = freeze_version(base, delta_path, tmp, dtype, cfg.freeze_device, cfg.freeze_tolerance)
            return step, tmp
        except (FreezeError, OSError) as exc:
            log.warning("%s: freezing failed (%s); the version is served eagerly", name, exc)
            tmp.unlink(missing_ok=True)
            return None

    def _freeze_live(self, handle: ModelHandle) -> None:
        """Serve the just-deployed version through a TorchScript-frozen module.

        The eager version is already live; this swaps in the same weights, frozen and
        checked against eager (``freeze_tolerance``), unless a newer version went live
        meanwhile. A failure only logs: the version stays served eagerly.
        """
        if self._get_live().version != handle.version:
            return  # superseded while queued behind an earlier freeze: it would only cost a core
        started = time.monotonic()
        frozen = self._frozen(handle.torch_model, self.registry.get(handle.version).delta_path, handle.version)
        if frozen is None:
            return
        step_model, tmp = frozen
        with self._swap_lock:
            if self._get_live().version != handle.version:
                tmp.unlink(missing_ok=True)
                return
            tmp.replace(self.registry.frozen_cache(handle.version))
            self._deploy(dataclasses.replace(handle, step_model=step_model, kind="frozen"))
        log.info("version %s frozen and swapped in %.1fs", handle.version, time.monotonic() - started)

    def _record(
        self,
        hook: AttemptHook | None,
        job: Job,
        state: str,
        result: EditResult | None,
        metrics: dict[str, float],
        repair: Repair | None,
        learn: bool = True,
    ) -> None:
        """Tell the meta-learner how an attempt ended (its failure never fails the job)."""
        if hook is None or self._meta is None:
            return
        try:
            self._meta.finish(hook, job.job_id, state, result, metrics, repair, learn=learn)
        except Exception:
            log.exception("meta-learner: could not record job %s (the job itself is unaffected)", job.job_id)

    def _run(
        self,
        job: Job,
        live: ModelHandle,
        plan: UpdatePlan,
        staging: Path,
        started: float,
        hook: EditHook | None,
    ) -> _Outcome:
        if live.torch_model is None:
            raise LearningError("the live model has no eager torch_model to train from")
        parent = live.version
        try:
            self.registry.get(parent)
            history = self.registry.feedback_history(parent)
        except NotFound:
            log.warning("live version %r is not in the registry; training over it as base", parent)
            parent, history = BASE_VERSION, []
        replay = history[-plan.replay_size :] if plan.replay_size else []
        if isinstance(hook, AttemptHook):
            hook.n_replay = len(replay)
        state = self._live_state(live)
        refs = self._references(live)
        fmt = self._format(live)

        t0 = time.monotonic()
        names = sorted({delta_name(i) for i in plan.edit_layers} | set(dense_names(state.delta)))
        deadline = t0 + self.cfg.max_train_seconds

        def should_stop() -> bool:
            return self._stop.is_set()

        result = Editor(fmt, precision=self.cfg.train_precision).train(
            live.torch_model,
            job.items,
            plan,
            state.stats,
            self._base_weight(names),
            state.delta,
            refs.retain,
            replay=replay,
            progress=lambda i, n, loss: self.jobs.progress(job.job_id, i, n, loss),
            should_stop=should_stop,
            deadline=deadline,
            hook=hook,
            space=self._space(state, live.torch_model, plan),
        )
        train_s = time.monotonic() - t0

        self.jobs.transition(job.job_id, "evaluating")
        t0 = time.monotonic()
        gate = Gate(fmt, GateThresholds.from_config(self.cfg), workers=self._gate_workers)
        deltas = (result.delta, state.delta)  # with the probe's keys: the probes the edit cannot reach are not run
        report = gate.evaluate(result.model, refs.gate, job.items, replay, live.torch_model, state.probe, deltas)
        gate_s = time.monotonic() - t0
        metrics = {
            **report.metrics,
            **result.metrics,
            "train_seconds": train_s,
            "gate_seconds": gate_s,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
        }
        if not report.passed:
            self.registry.discard(staging)
            # What the candidate answered where it failed: the trainer sees why.
            answered = tuple(f"asked {q!r}, it answered {a[:160]!r}" for q, a in report.failures[:3])
            return _Outcome("rejected", result, metrics, report.reasons + answered, "gate")
        plan = result.plan or plan
        # In one process (role ``all``) the version goes live on its eager weights and
        # is frozen after the deploy, so the correction is live one freeze sooner. A
        # worker (role ``worker``) freezes first: the replicas that follow the pointer
        # load the version from the registry and should find its frozen module there.
        self.jobs.transition(job.job_id, "freezing", metrics=metrics)
        delta_file = staging / "delta.safetensors"
        save_delta(result.delta, delta_file)
        freeze_first = self.cfg.freeze and self.cfg.role == "worker"
        early = self._frozen(result.model, delta_file, staging.name) if freeze_first else None
        if self._get_live().version != live.version:
            if early is not None:
                early[1].unlink(missing_ok=True)
            # An admin rolled back or promoted meanwhile: deploying now would undo that.
            raise LearningError(f"the live version changed from {live.version} during the update; resubmit")
        version = self.registry.commit(staging, parent, list(job.items), plan, metrics)
        step_model: Any = EagerStepModel(result.model)
        if early is not None:
            step_model = early[0]
            early[1].replace(self.registry.frozen_cache(version.version_id))
        handle = ModelHandle(
            version=version.version_id,
            tokenizer=live.tokenizer,
            step_model=step_model,
            max_positions=live.max_positions,
            eos_token_ids=live.eos_token_ids,
            kind="frozen" if early is not None else "eager",
            torch_model=result.model,
        )
        # Swap first, then move the pointer: a crash in between restarts on the old
        # version, consistent with the job being marked failed by recover().
        with self._swap_lock:
            self._deploy(handle)
        self.registry.promote(version.version_id)
        metrics["stored_bytes"] = float(version.stored_bytes)
        # The next job starts from here: score the new live version now, after the swap.
        with self._prepare_lock:
            probe = report.probe or probe_live(result.model, refs.gate, self._gate_workers, self.cfg.edit_layers)
            self._state = _LiveState(handle.version, result.delta, state.stats.with_keys(result.keys), probe)
        self._after_deploy(handle, self._state, freeze=self.cfg.freeze and not freeze_first)

        def publish(earlier: dict[str, float], notes: list[str]) -> Job:
            metrics["total_seconds"] = time.monotonic() - started
            # A repaired job keeps the figures and the story of its earlier attempts.
            done = self.jobs.transition(
                job.job_id, "deployed", metrics={**metrics, **earlier}, version=version.version_id, reasons=list(notes)
            )
            log.info("job %s deployed as %s in %.1fs", job.job_id, version.version_id, metrics["total_seconds"])
            try:
                self.registry.prune(self.cfg.keep_ancestors, self.cfg.keep_last)
            except OSError:
                log.exception("retention: pruning failed (nothing was lost; retried after the next deploy)")
            return done

        return _Outcome("deployed", result, metrics, (), "", publish)


@dataclass(frozen=True)
class _Outcome:
    """How one attempt ended."""

    state: str
    result: EditResult | None
    metrics: dict[str, float]
    reasons: tuple[str, ...]
    trigger: str
    publish: Callable[[dict[str, float], list[str]], Job] | None = None
    """For a deployed attempt: marks the job ``deployed`` (with the earlier attempts'
    figures and notes) once the meta-learner has its record."""


def _with_notes(error: str, notes: list[str]) -> str:
    return " | ".join([*notes, error]) if notes else error
