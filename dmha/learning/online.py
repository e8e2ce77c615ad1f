"""Online learning as the server offers it: feedback, jobs, versions, hot swaps.

:class:`OnlineLearning` is what the gRPC services call. It applies the rules a
user of the service relies on: only trainers and admins change the model (a
user's feedback is kept as a candidate a trainer may promote), a job is visible
to its submitter and to trainers (anyone else gets NOT_FOUND), and only admins
roll back or promote versions. The heavy work runs in :class:`LearningWorker`'s
thread; everything here is blocking and called through ``run_blocking``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dmha.auth.tokens import Principal
from dmha.config import LearningConfig, ModelConfig
from dmha.errors import FailedPrecondition, InvalidArgument, NotFound
from dmha.learning.feedback import FeedbackItem
from dmha.learning.jobs import Job, JobEvent, JobStore
from dmha.learning.live import LiveTarget
from dmha.learning.loading import load_live_handle
from dmha.learning.meta.controller import MetaController
from dmha.learning.registry import Registry, Version
from dmha.learning.worker import LearningWorker
from dmha.llm.engine import load_eager_handle

__all__ = ["OnlineLearning", "learning_cache_dir", "prepare_references", "registry_for"]

log = logging.getLogger(__name__)

_TRAINERS = ("trainer", "admin")


class OnlineLearning:
    """Feedback submission, job tracking and version management.

    Args:
        cfg: the ``learning`` config section.
        model_cfg: the ``model`` section (for loading versions on rollback).
        jobs: durable job store.
        registry: version registry.
        engine: the serving engine (hot swaps), or a worker's guarded model holder.
    """

    def __init__(
        self,
        cfg: LearningConfig,
        model_cfg: ModelConfig,
        jobs: JobStore,
        registry: Registry,
        engine: LiveTarget,
        cache_dir: Path,
    ) -> None:
        self._cfg = cfg
        self._model_cfg = model_cfg
        self.jobs = jobs
        self.registry = registry
        self._engine = engine
        self.meta = MetaController(cfg.meta, registry.root / "meta", log_dir=registry.root / "meta" / "tensorboard")
        self.worker = LearningWorker(
            cfg,
            jobs,
            registry,
            lambda: engine.handle,
            engine.swap,
            system_prompt=model_cfg.system_prompt,
            cache_dir=cache_dir,
            meta=self.meta if cfg.meta.enabled else None,
        )

    def start(self) -> None:
        """Settle jobs left by a previous process and start training in the background."""
        self.worker.start()

    def stop(self) -> None:
        """Stop the training thread (a running update is abandoned, live model untouched)."""
        self.worker.stop()

    # -- feedback and jobs -----------------------------------------------------------

    def submit(self, principal: Principal, input_text: str, target_text: str) -> Job:
        """Record feedback: a training job for trainers/admins, a candidate for users.

        Raises:
            InvalidArgument: empty or oversize input/target (named, with the limit).
            ResourceExhausted: the training queue is full.
            RedisUnavailable: Redis is down (nothing recorded).
        """
        item = FeedbackItem.create(input_text, target_text, self._cfg.max_feedback_bytes)
        return self.jobs.submit([item], principal.user_id, candidate=not principal.has(*_TRAINERS))

    def add_candidate(self, user_id: str, input_text: str, target_text: str, kb_entailed: bool = False) -> Job:
        """A correction from the consistency monitor: the meta-learner decides whether to learn it.

        Only what the knowledge base vouches for is learned without review: when
        every claim of the corrected answer is entailed by the KB (and the
        deployment allows it, ``meta.auto_learn_entailed``), it is queued for training;
        anything else is kept as a candidate for a trainer. Raw user text never trains.
        The job's ``note`` records why.

        Args:
            user_id: whose conversation it came from.
            input_text: the user's message.
            target_text: the corrected answer.
            kb_entailed: every claim of ``target_text`` is entailed by the user's KB.

        Returns:
            The job (``queued`` or ``candidate``).
        """
        item = FeedbackItem.create(input_text, target_text, self._cfg.max_feedback_bytes)
        meta = self._cfg.meta
        learn = kb_entailed and meta.enabled and meta.auto_learn_entailed
        if learn:
            note = "meta-learner: queued for training, every claim of the corrected answer is entailed by the KB"
        elif kb_entailed:
            note = "kept for trainer review: automatic learning of KB-entailed corrections is off"
        else:
            note = "kept for trainer review: not every claim of the corrected answer is entailed by the KB"
        log.info("monitor correction from %s: %s", user_id, note)
        return self.jobs.submit([item], user_id, candidate=not learn, note=note)

    def get_job(self, principal: Principal, job_id: str) -> Job:
        """A job its caller may see.

        Raises:
            NotFound: no such job, or another user's (never revealed).
        """
        job = self.jobs.get(job_id)
        if job.submitter != principal.user_id and not principal.has(*_TRAINERS):
            raise NotFound(f"no training job {job_id!r}")
        return job

    def watch(self, principal: Principal, job_id: str, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events until its final one (blocking generator).

        Raises:
            NotFound: as :meth:`get_job`.
        """
        self.get_job(principal, job_id)
        return self.jobs.watch(job_id, timeout=timeout)

    def candidates(self, principal: Principal) -> list[Job]:
        """User feedback awaiting review (trainers/admins).

        Raises:
            PermissionDenied: caller is neither trainer nor admin.
        """
        principal.require(*_TRAINERS)
        return self.jobs.list_candidates()

    def promote_candidate(self, principal: Principal, job_id: str) -> Job:
        """Queue a candidate for training (trainers/admins).

        Raises:
            PermissionDenied: caller is neither trainer nor admin.
            NotFound: no such job. FailedPrecondition: not a candidate.
        """
        principal.require(*_TRAINERS)
        return self.jobs.promote_candidate(job_id)

    # -- the meta-learner ------------------------------------------------------------

    def insights(self, principal: Principal) -> dict[str, Any]:
        """What the meta-learner knows: mechanisms, learner versions, update records.

        Raises:
            PermissionDenied: caller is neither trainer nor admin.
        """
        principal.require(*_TRAINERS)
        return self.meta.store.insights()

    def import_insights(self, principal: Principal, doc: Any) -> int:
        """Add another deployment's update records to the meta-learner's replay data (admins).

        Args:
            principal: the caller.
            doc: a parsed insights document (as :meth:`insights` returns).

        Returns:
            Records added.

        Raises:
            PermissionDenied: caller is not admin.
            InvalidArgument: the document is malformed (the field is named).
        """
        principal.require("admin")
        return self.meta.import_insights(doc)

    def import_insights_json(self, principal: Principal, text: str) -> int:
        """:meth:`import_insights` of a document still in its JSON text (as it arrives).

        The caller's role is checked before the text is measured or parsed, so a caller
        who may not import learns nothing about the document.

        Args:
            principal: the caller.
            text: the JSON document, at most ``learning.max_insights_bytes`` UTF-8 bytes.

        Returns:
            Records added.

        Raises:
            PermissionDenied: caller is not admin.
            InvalidArgument: ``insights_json`` is too large or not JSON, or the document
                is malformed (the field is named).
        """
        principal.require("admin")
        size = len(text.encode("utf-8"))
        limit = self._cfg.max_insights_bytes
        if size > limit:
            raise InvalidArgument("insights_json", f"is {size} bytes; limit {limit} (learning.max_insights_bytes)")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                "insights_json", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        except RecursionError as exc:  # "[[[[..." a few thousand deep: the parser gives up
            raise InvalidArgument("insights_json", "nests too deeply to be an insights document") from exc
        return self.import_insights(principal, doc)

    # -- versions --------------------------------------------------------------------

    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        return self.registry.versions()

    def version(self, version_id: str) -> Version:
        """One version. Raises NotFound."""
        return self.registry.get(version_id)

    @property
    def live_id(self) -> str:
        """The version being served."""
        return self._engine.handle.version

    def _activate(self, version: Version) -> Version:
        handle = load_live_handle(self.registry, self._model_cfg, version.version_id)
        self._engine.swap(handle)
        self.registry.promote(handle.version)
        # The worker rebuilds its state (delta, protected keys) for the new live version
        # on its next job; the frozen cache keeps only the live version's module.
        self.registry.drop_frozen(keep={handle.version})
        return self.registry.get(handle.version)

    def rollback(self, principal: Principal, to: str = "") -> Version:
        """Serve the live version's parent (or ``to``) again (admins).

        Raises:
            PermissionDenied: caller is not admin.
            FailedPrecondition: live is base and no target was given.
            NotFound: no such version. ArtifactError: it is damaged.
        """
        principal.require("admin")
        if to:
            target = self.registry.get(to)
        else:
            current = self.registry.get(self.live_id)
            if current.parent is None:
                raise FailedPrecondition("the live version is base; there is nothing to roll back")
            target = self.registry.get(current.parent)
        log.info("rollback by %s: %s -> %s", principal.user_id, self.live_id, target.version_id)
        return self._activate(target)

    def promote(self, principal: Principal, version_id: str) -> Version:
        """Serve a given version (admins).

        Raises:
            PermissionDenied: caller is not admin. NotFound: no such version.
        """
        principal.require("admin")
        return self._activate(self.registry.get(version_id))


def registry_for(data_dir: Path, base_path: Path, registry_dir: Path | None = None, shared: bool = False) -> Registry:
    """The registry with ``base_path`` as version base.

    Args:
        data_dir: DMHA's data dir.
        base_path: the base model folder.
        registry_dir: ``learning.registry_dir``; None = ``<data_dir>/registry``.
        shared: other processes use it too (see :class:`Registry`).
    """
    root = Path(registry_dir) if registry_dir is not None else Path(data_dir) / "registry"
    return Registry(root, base_path, shared=shared)


def learning_cache_dir(data_dir: Path) -> Path:
    """Where the base model's learning references are cached (``<data_dir>/cache/learning``)."""
    return Path(data_dir) / "cache" / "learning"


def prepare_references(
    model_dir: Path,
    data_dir: Path,
    model_cfg: ModelConfig,
    cfg: LearningConfig,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Compute (or find cached) the learning references of a base model (``dmha setup``).

    Args:
        model_dir: the base model folder.
        data_dir: DMHA's data dir (the cache goes under it).
        model_cfg: the ``model`` section (system prompt, device).
        cfg: the ``learning`` section (edit layers).
        progress: told what is being computed.

    Returns:
        The cache folder.
    """
    from dmha.learning.prompting import ChatFormat
    from dmha.learning.references import ensure_references

    handle = load_eager_handle(model_dir, model_cfg)
    cache = learning_cache_dir(data_dir)
    ensure_references(
        handle.torch_model,
        model_dir,
        ChatFormat(handle.tokenizer, model_cfg.system_prompt),
        cfg.edit_layers,
        cache,
        progress,
    )
    return cache
