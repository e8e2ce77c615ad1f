"""The training worker: takes queued jobs and turns them into live model versions.

One job = train (on a copy of the live model) -> gate -> freeze -> register -> deploy.
Every artifact is written into a registry staging folder and registered only at
the end, and ``deploy`` is called only for a candidate that passed the gate: a
process killed at any point (even ``kill -9``) leaves the live model and the live
pointer as they were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmha.config import LearningConfig
from dmha.errors import DMHAError, NotFound
from dmha.learning.errors import FreezeError, LearningError
from dmha.learning.freezing import freeze
from dmha.learning.gate import Gate, GateReference, GateThresholds, build_gate_reference
from dmha.learning.jobs import Job, JobStore
from dmha.learning.objective import RetainSet, build_retain_set
from dmha.learning.plan import UpdatePlan
from dmha.learning.prompting import DEFAULT_SYSTEM_PROMPT, ChatFormat
from dmha.learning.registry import BASE_VERSION, Registry
from dmha.learning.steps import EagerStepModel
from dmha.learning.trainer import Trainer
from dmha.llm.base import ModelHandle

__all__ = ["LearningWorker", "PlanHook"]

log = logging.getLogger(__name__)

PlanHook = Callable[[Job, UpdatePlan], UpdatePlan]
"""``plan_for(job, default_plan) -> plan``: where the causal meta-learner decides."""


@dataclass(frozen=True)
class _Reference:
    version: str
    retain: RetainSet
    gate: GateReference


class LearningWorker:
    """A background thread that runs training jobs one at a time.

    Args:
        cfg: the ``learning`` section of the config.
        jobs: the job store.
        registry: the version registry.
        get_live: returns the live :class:`~dmha.llm.base.ModelHandle` (its
            ``torch_model`` and ``tokenizer`` are used; its ``version`` must be a
            registry id such as ``base``).
        deploy: the hot swap; called with the new handle only when the gate passed.
        system_prompt: the serving system message (``ModelConfig.system_prompt``).
        plan_for: optional meta-learner hook choosing each job's plan.
    """

    def __init__(
        self,
        cfg: LearningConfig,
        jobs: JobStore,
        registry: Registry,
        get_live: Callable[[], ModelHandle],
        deploy: Callable[[ModelHandle], None],
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        plan_for: PlanHook | None = None,
    ) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.registry = registry
        self._get_live = get_live
        self._deploy = deploy
        self._system_prompt = system_prompt
        self._plan_for = plan_for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ref: _Reference | None = None
        self._fmt: ChatFormat | None = None
        self._trainer: Trainer | None = None
        self._prepare_lock = threading.Lock()

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Settle jobs a previous process left behind, then start the thread.

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
        """Ask the thread to stop (a running update is abandoned at its next step) and wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        # The live model's reference is computed lazily by the first job (about a
        # minute of CPU): doing it at start-up would slow every chat of the first
        # minute on a small machine, for a job that may never come.
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

    # ------------------------------------------------------------- one job

    def _format(self, live: ModelHandle) -> ChatFormat:
        if self._fmt is None or self._fmt.tokenizer is not live.tokenizer:
            self._fmt = ChatFormat(live.tokenizer, self._system_prompt)
        return self._fmt

    def _trainer_for(self, fmt: ChatFormat) -> Trainer:
        if self._trainer is None or self._trainer.fmt is not fmt:
            # One trainer per chat format: it caches per-live-version subspaces.
            self._trainer = Trainer(fmt)
        return self._trainer

    def prepare(self) -> None:
        """Compute the live model's retain and gate references (cached per version).

        Called by each job (a no-op when cached) and after each deploy, so that a job
        only pays for it when it is the first, or arrives right after a swap.
        """
        self._reference(self._get_live())

    def _reference(self, live: ModelHandle) -> _Reference:
        # Serialised: a rollback (request thread) and a job (worker thread) may both ask.
        with self._prepare_lock:
            ref = self._ref
            if ref is not None and ref.version == live.version:
                return ref
            fmt = self._format(live)
            started = time.monotonic()
            model = live.torch_model
            retain = build_retain_set(model, fmt)
            gate = build_gate_reference(model, fmt)
            ref = _Reference(live.version, retain, gate)
            self._trainer_for(fmt).warm(model, retain, UpdatePlan.from_config(self.cfg))
            self._ref = ref
            log.info("reference of %s computed in %.1fs", live.version, time.monotonic() - started)
            return ref

    def run_once(self, timeout: float = 0.5) -> Job | None:
        """Take one queued job (waiting up to ``timeout``) and run it to a final state.

        Returns:
            The finished job, or None when the queue stayed empty.
        """
        job = self.jobs.claim(timeout)
        if job is None:
            return None
        return self.process(job)

    def process(self, job: Job) -> Job:
        """Run one claimed job to ``deployed``, ``rejected`` or ``failed``.

        Returns:
            The job in its final state.
        """
        started = time.monotonic()
        live = self._get_live()
        base_plan = UpdatePlan.from_config(self.cfg)
        plan = self._plan_for(job, base_plan) if self._plan_for else base_plan
        job = self.jobs.transition(job.job_id, "training", step=0, steps=plan.steps, plan=plan.to_dict())
        staging = self.registry.new_staging()
        try:
            return self._run(job, live, plan, staging, started)
        except (LearningError, InterruptedError, NotFound, ValueError, RuntimeError, OSError) as exc:
            # Expected failures of an update (divergence, full disk, out of memory, a
            # cancelled run): the job says why; the live model was never touched.
            self.registry.discard(staging)
            log.warning("job %s failed: %s", job.job_id, exc, exc_info=not isinstance(exc, LearningError))
            return self.jobs.transition(job.job_id, "failed", error=str(exc) or type(exc).__name__)
        except BaseException:
            # A bug: the job must not stay "running" forever, but the error is re-raised
            # (and logged with its traceback by the loop), never turned into a verdict.
            self.registry.discard(staging)
            try:
                self.jobs.transition(job.job_id, "failed", error="internal error (see the server log)")
            except DMHAError:
                log.exception("could not mark job %s failed", job.job_id)
            raise

    def _run(self, job: Job, live: ModelHandle, plan: UpdatePlan, staging: Any, started: float) -> Job:
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
        ref = self._reference(live)
        fmt = self._format(live)

        t0 = time.monotonic()
        result = self._trainer_for(fmt).train(
            live.torch_model,
            job.items,
            plan,
            ref.retain,
            replay=replay,
            progress=lambda i, n, loss: self.jobs.progress(job.job_id, i, n, loss),
            adapter_dir=staging / "adapter",
            should_stop=self._stop.is_set,
        )
        train_s = time.monotonic() - t0

        self.jobs.transition(job.job_id, "evaluating")
        t0 = time.monotonic()
        gate = Gate(fmt, GateThresholds.from_config(self.cfg), self.cfg.locality_tie_nats)
        report = gate.evaluate(result.model, ref.gate, job.items, replay, live.torch_model)
        gate_s = time.monotonic() - t0
        metrics = {
            **report.metrics,
            "train_seconds": train_s,
            "gate_seconds": gate_s,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
        }
        if not report.passed:
            self.registry.discard(staging)
            return self.jobs.transition(
                job.job_id, "rejected", metrics=metrics, reasons=list(report.reasons)
            )

        self.jobs.transition(job.job_id, "freezing", metrics=metrics)
        t0 = time.monotonic()
        step_model: Any = None
        kind = "eager"
        if self.cfg.freeze:
            try:
                step_model = freeze(
                    result.model, staging / "frozen.pt", self.cfg.freeze_device, self.cfg.freeze_tolerance
                )
                kind = "frozen"
            except FreezeError as exc:
                # The update itself is good: serve it eagerly rather than lose it.
                log.warning("job %s: freezing failed (%s); the version is served eagerly", job.job_id, exc)
                (staging / "frozen.pt").unlink(missing_ok=True)
        if step_model is None:
            step_model = EagerStepModel(result.model)
        metrics["freeze_seconds"] = time.monotonic() - t0
        metrics["frozen"] = 1.0 if kind == "frozen" else 0.0

        if self._get_live().version != live.version:
            # An admin rolled back or promoted meanwhile: deploying now would undo that.
            raise LearningError(
                f"the live version changed from {live.version} during the update; resubmit"
            )
        version = self.registry.commit(staging, parent, list(job.items), plan, metrics)
        handle = ModelHandle(
            version=version.version_id,
            tokenizer=live.tokenizer,
            step_model=step_model,
            max_positions=live.max_positions,
            eos_token_ids=live.eos_token_ids,
            kind=kind,  # type: ignore[arg-type]
            torch_model=result.model,
        )
        # Swap first, then move the pointer: a crash in between restarts on the old
        # version, consistent with the job being marked failed by recover().
        self._deploy(handle)
        self.registry.promote(version.version_id)
        metrics["total_seconds"] = time.monotonic() - started
        done = self.jobs.transition(
            job.job_id, "deployed", metrics=metrics, version=version.version_id
        )
        log.info("job %s deployed as %s in %.1fs", job.job_id, version.version_id, metrics["total_seconds"])
        if not self._stop.is_set():
            try:
                self.prepare()
            except (RuntimeError, torch.cuda.OutOfMemoryError):
                log.exception("could not precompute the new version's reference")
        return done
