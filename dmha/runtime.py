"""The composition root: builds every component from the config, once.

The server's servicers receive the parts they need from a :class:`Runtime`;
nothing else constructs components, so choosing a backend happens here only.

This module is also the server's only door into the core (an import-linter
contract in pyproject.toml enforces it): every core name a servicer or a server
command uses is re-exported here, so the surface the transport depends on is this
``__all__`` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmha import errors
from dmha.auth.ratelimit import Limiter, RateLimiter, RedisRateLimiter
from dmha.auth.tokens import Authenticator, Principal, load_secrets
from dmha.config import DMHAConfig, LimitsConfig, load_config, render_yaml
from dmha.context import ChatPipeline, TurnHook, drain, resolve_options
from dmha.executor import (
    bind_caller,
    check_cancelled,
    check_executor,
    configure_executor,
    run_blocking,
    shutdown_executor,
)
from dmha.health import ComponentHealth, HealthMonitor, HealthReport, Probe, check_disk
from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.hook import KnowledgeHook
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.model import Conflict, Fact, StatementRecord, statement_kind
from dmha.learning.jobs import Job, JobEvent, JobStore, JobWatch
from dmha.learning.lease import WorkerLease, new_owner_id
from dmha.learning.live import GuardedDeploy, LiveFollower, LivePointer, ModelHolder
from dmha.learning.loading import load_live_handle
from dmha.learning.online import OnlineLearning, learning_cache_dir, prepare_references, registry_for
from dmha.learning.registry import Registry, Version
from dmha.llm.base import ModelHandle
from dmha.llm.engine import HFEngine, set_torch_threads
from dmha.llm.model_store import ensure_model
from dmha.logs import configure_logging, request_id
from dmha.memory.changes import MemoryChanges
from dmha.memory.hook import MemoryHook
from dmha.memory.longterm_memory import LongTermMemory, build_longterm
from dmha.memory.records import MemoryRecord, RetrievedMemory
from dmha.memory.summariser import LLMSummariser
from dmha.memory.working import RedisWorkingMemory, SessionInfo
from dmha.metacognition.monitor import EventStore, MonitorHook, RecordedEvent
from dmha.redis_connection import RedisConnection
from dmha.sessions import Sessions
from dmha.turn import Turn, TurnResult

if TYPE_CHECKING:
    from dmha import report

__all__ = [
    # The composition root.
    "Runtime",
    "build_runtime",
    # Re-exported for the server (its only door into the core).
    "Authenticator",
    "ChatPipeline",
    "ComponentHealth",
    "Conflict",
    "DMHAConfig",
    "EventStore",
    "Fact",
    "HealthMonitor",
    "HealthReport",
    "Job",
    "JobEvent",
    "JobWatch",
    "KnowledgeBank",
    "KnowledgeBase",
    "Limiter",
    "LimitsConfig",
    "LongTermMemory",
    "MemoryRecord",
    "OnlineLearning",
    "Principal",
    "RateLimiter",
    "RedisRateLimiter",
    "WorkerRuntime",
    "build_worker",
    "RecordedEvent",
    "RetrievedMemory",
    "SessionInfo",
    "Sessions",
    "StatementRecord",
    "Turn",
    "TurnResult",
    "Version",
    "bind_caller",
    "check_cancelled",
    "configure_logging",
    "drain",
    "ensure_model",
    "prepare_references",
    "set_torch_threads",
    "errors",
    "learning_cache_dir",
    "registry_for",
    "report",
    "load_config",
    "load_secrets",
    "render_yaml",
    "request_id",
    "resolve_options",
    "run_blocking",
    "statement_kind",
]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # The report package (matplotlib, networkx) loads only for `dmha report`, not for `serve`.
    if name == "report":
        import dmha.report

        return dmha.report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Runtime:
    """Every live component of a server process."""

    cfg: DMHAConfig
    redis: RedisConnection
    llm: HFEngine
    auth: Authenticator
    limiter: RedisRateLimiter
    pipeline: ChatPipeline
    sessions: Sessions
    bank: KnowledgeBank
    events: EventStore
    longterm: LongTermMemory | None
    learning: OnlineLearning
    health: HealthMonitor
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Stop everything, newest first; safe to call twice."""
        _close_all(self.closers)


def build_runtime(
    cfg: DMHAConfig,
    progress: Callable[[str], None] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Runtime:
    """Start every component the config asks for.

    Args:
        cfg: the whole config.
        progress: receives a line per slow start-up stage (model preparation).
        loop: the server's event loop; lets archival summarise with the LLM from
            worker threads (without it summaries are extractive).

    Returns:
        The running components.

    Raises:
        StartupError: a backend cannot be opened (the message names it).
    """
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    configure_executor(cfg.server.executor_threads, cfg.server.executor_per_user)
    threads = set_torch_threads(cfg.model.threads)
    closers: list[Callable[[], Any]] = [shutdown_executor]
    # Process-wide: the generation thread must not wait 5 ms for the lock at each op.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(cfg.server.gil_switch_interval_ms / 1000)
    closers.append(lambda: sys.setswitchinterval(switch_interval))

    redis = RedisConnection(cfg.redis, cfg.data_dir)
    closers.append(redis.close)
    try:
        model_dir = ensure_model(cfg.model.path, cfg.data_dir, progress)
        role = cfg.learning.role
        if role == "worker":
            raise errors.ConfigError("learning.role is 'worker': run `dmha worker`, which serves nothing")
        registry, pointer, handle = _open_registry(cfg, redis, model_dir)
        llm = HFEngine(handle, cfg.limits, cfg.model.max_batch_size)
        closers.append(llm.close)
        log.info("model %s (%s) loaded from %s (torch threads %d)", handle.version, handle.kind, model_dir, threads)
        jobs = JobStore(redis)
        learning = OnlineLearning(cfg.learning, cfg.model, jobs, registry, llm, learning_cache_dir(cfg.data_dir))
        if role == "all" and cfg.learning.enabled:
            learning.start()
            closers.append(learning.stop)
        if role == "serve":
            # A replica follows the live version the workers deploy, and reclaims the
            # jobs of workers that died (any process may; one settles each job).
            follower = LiveFollower(
                pointer,
                lambda v: load_live_handle(registry, cfg.model, v),
                llm,
                cfg.learning.live_poll_seconds,
                on_tick=jobs.reclaim,
            )
            follower.start()
            closers.append(follower.stop)

        secret, api_key = load_secrets(cfg.auth, cfg.data_dir)
        working = RedisWorkingMemory(redis, cfg.memory.working)
        bank = KnowledgeBank(redis, cfg.knowledge)
        events = EventStore(redis)
        longterm: LongTermMemory | None = None
        memory_hook: MemoryHook | None = None
        if cfg.memory.longterm.enabled:
            summariser = LLMSummariser(llm, loop) if loop is not None and cfg.memory.longterm.summarise else None
            longterm = build_longterm(cfg.memory, cfg.data_dir, working=working, summariser=summariser)
            closers.append(longterm.close)
            if role == "serve":
                # Replicas share Milvus: a change through one drops the others' hot copy.
                changes = MemoryChanges(redis, longterm.invalidate, longterm.invalidate_all)
                longterm.on_change = changes.publish
                changes.start()
                closers.append(changes.stop)
            retrieval = cfg.memory.retrieval
            memory_hook = MemoryHook(
                longterm, llm, retrieval.top_k, retrieval.token_budget, retrieval.prompt_kinds, retrieval.prompt_roles
            )
        # Order matters: the KB strips statement lines before memory retrieval reads
        # the message, and the monitor reviews last, seeing claims and memories.
        hooks: list[TurnHook] = []
        knowledge = KnowledgeHook(bank) if cfg.knowledge.enabled else None
        if knowledge is not None:
            hooks.append(knowledge)
        if memory_hook is not None:
            hooks.append(memory_hook)
        if knowledge is not None and cfg.metacognition.enabled:
            reorganise = memory_hook.reorganise if memory_hook and cfg.metacognition.reorganise_memory else None
            hooks.append(
                MonitorHook(
                    cfg.metacognition, knowledge, events, reorganise=reorganise, candidate_sink=learning.add_candidate
                )
            )
        pipeline = ChatPipeline(llm, working, cfg.model, cfg.limits, hooks)
        health = HealthMonitor(
            _probes(cfg, redis, llm, longterm), cfg.health.probe_timeout_seconds, cfg.health.failures_to_down
        )
        closers.append(health.close)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return Runtime(
        cfg=cfg,
        redis=redis,
        llm=llm,
        auth=Authenticator(cfg.auth, secret, api_key),
        limiter=RedisRateLimiter(redis, cfg.limits.rate_limit_per_minute, "user"),
        pipeline=pipeline,
        sessions=Sessions(working),
        bank=bank,
        events=events,
        longterm=longterm,
        learning=learning,
        health=health,
        closers=closers,
    )


def _open_registry(
    cfg: DMHAConfig, redis: RedisConnection, model_dir: Any
) -> tuple[Registry, LivePointer, ModelHandle]:
    """The registry, the pointer in Redis that follows it, and the live version loaded.

    The single process (role ``all``) serves what its registry names, as always; a
    replica or worker serves what Redis names (set from the registry the first time).
    """
    shared = cfg.learning.role != "all"
    registry = registry_for(cfg.data_dir, model_dir, cfg.learning.registry_dir, shared=shared)
    pointer = LivePointer(redis)
    live_id = pointer.seed(registry.live_id) if shared else None
    handle = load_live_handle(registry, cfg.model, live_id)
    # Every move of the registry's pointer (a deploy, an admin's rollback) is announced.
    registry.on_promote(pointer.set)
    return registry, pointer, handle


@dataclass
class WorkerRuntime:
    """The components of a training worker (``dmha worker``)."""

    cfg: DMHAConfig
    redis: RedisConnection
    jobs: JobStore
    holder: ModelHolder
    learning: OnlineLearning
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Stop training (a running update is abandoned), give the lease up, disconnect."""
        _close_all(self.closers)


def build_worker(cfg: DMHAConfig, progress: Callable[[str], None] | None = None) -> WorkerRuntime:
    """Start a training worker: it claims queued jobs, trains, gates, freezes, and
    deploys by moving the shared live pointer; it serves nothing.

    Args:
        cfg: the whole config (``learning.role`` is treated as ``worker``).
        progress: receives a line per slow start-up stage.

    Returns:
        The running worker.

    Raises:
        StartupError: a backend cannot be opened.
    """
    cfg = cfg.model_copy(update={"learning": cfg.learning.model_copy(update={"role": "worker"})})
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    set_torch_threads(cfg.model.threads)
    redis = RedisConnection(cfg.redis, cfg.data_dir)
    closers: list[Callable[[], Any]] = [redis.close]
    try:
        model_dir = ensure_model(cfg.model.path, cfg.data_dir, progress)
        registry, pointer, handle = _open_registry(cfg, redis, model_dir)
        holder = ModelHolder(handle)
        owner = new_owner_id()
        jobs = JobStore(redis, owner=owner, lease_seconds=cfg.learning.claim_idle_seconds)
        lease = WorkerLease(jobs)
        lease.start()
        closers.append(lease.stop)
        follower = LiveFollower(
            pointer, lambda v: load_live_handle(registry, cfg.model, v), holder, cfg.learning.live_poll_seconds
        )
        follower.start()
        closers.append(follower.stop)
        learning = OnlineLearning(
            cfg.learning,
            cfg.model,
            jobs,
            registry,
            GuardedDeploy(holder, pointer),
            learning_cache_dir(cfg.data_dir),
        )
        learning.start()
        closers.append(learning.stop)
        log.info("worker %s ready: model %s (%s), registry %s", owner, handle.version, handle.kind, registry.root)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return WorkerRuntime(cfg, redis, jobs, holder, learning, closers)


def _probes(
    cfg: DMHAConfig, redis: RedisConnection, llm: HFEngine, longterm: LongTermMemory | None
) -> list[tuple[str, Probe]]:
    """What health checks: every part a request may need."""
    timeout, stall = cfg.health.probe_timeout_seconds, cfg.health.stall_seconds
    probes: list[tuple[str, Probe]] = [("redis", lambda: redis.probe(timeout))]
    if longterm is not None:
        probes.append(("milvus", lambda: longterm.probe(timeout)))
    probes += [
        ("executor", lambda: check_executor(stall)),
        ("generation", lambda: llm.probe(cfg.health.generation_stall_seconds)),
        ("disk", lambda: check_disk(cfg.data_dir, cfg.health.min_free_disk_mb * 1024 * 1024)),
    ]
    return probes


def _close_all(closers: list[Callable[[], Any]]) -> None:
    """Run ``closers`` newest first, emptying the list (a second call does nothing)."""
    while closers:
        closer = closers.pop()
        try:
            closer()
        except Exception:  # shutdown must go on; the error is logged, not hidden
            log.exception("error while shutting down")
