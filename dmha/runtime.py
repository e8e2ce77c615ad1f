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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmha import errors
from dmha.auth.ratelimit import RateLimiter
from dmha.auth.tokens import Authenticator, Principal, load_secrets
from dmha.config import DMHAConfig, LimitsConfig, load_config, render_yaml
from dmha.context import ChatPipeline, TurnHook, drain, resolve_options
from dmha.executor import bind_caller, check_cancelled, configure_executor, run_blocking, shutdown_executor
from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.hook import KnowledgeHook
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.model import Conflict, Fact, StatementRecord, statement_kind
from dmha.learning.jobs import Job, JobEvent, JobStore, JobWatch
from dmha.learning.loading import load_live_handle
from dmha.learning.online import OnlineLearning, learning_cache_dir, prepare_references, registry_for
from dmha.learning.registry import Version
from dmha.llm.engine import HFEngine, set_torch_threads
from dmha.llm.model_store import ensure_model
from dmha.logs import configure_logging, request_id
from dmha.memory.hook import MemoryHook
from dmha.memory.longterm_memory import LongTermMemory, build_longterm
from dmha.memory.records import MemoryRecord, RetrievedMemory
from dmha.memory.summariser import LLMSummariser
from dmha.memory.working import RedisWorkingMemory, SessionInfo
from dmha.metacognition.monitor import EventStore, MonitorHook, RecordedEvent
from dmha.redis_connection import RedisConnection
from dmha.sessions import Sessions
from dmha.turn import Turn, TurnResult

__all__ = [
    # The composition root.
    "Runtime",
    "build_runtime",
    # Re-exported for the server (its only door into the core).
    "Authenticator",
    "ChatPipeline",
    "Conflict",
    "DMHAConfig",
    "EventStore",
    "Fact",
    "Job",
    "JobEvent",
    "JobWatch",
    "KnowledgeBank",
    "KnowledgeBase",
    "LimitsConfig",
    "LongTermMemory",
    "MemoryRecord",
    "OnlineLearning",
    "Principal",
    "RateLimiter",
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
    "load_config",
    "load_secrets",
    "render_yaml",
    "request_id",
    "resolve_options",
    "run_blocking",
    "statement_kind",
]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Every live component of a server process."""

    cfg: DMHAConfig
    redis: RedisConnection
    llm: HFEngine
    auth: Authenticator
    limiter: RateLimiter
    pipeline: ChatPipeline
    sessions: Sessions
    bank: KnowledgeBank
    events: EventStore
    longterm: LongTermMemory | None
    learning: OnlineLearning
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Stop everything, newest first; safe to call twice."""
        while self.closers:
            closer = self.closers.pop()
            try:
                closer()
            except Exception:  # shutdown must go on; the error is logged, not hidden
                log.exception("error while shutting down")


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

    redis = RedisConnection(cfg.redis, cfg.data_dir)
    closers.append(redis.close)
    try:
        model_dir = ensure_model(cfg.model.path, cfg.data_dir, progress)
        registry = registry_for(cfg.data_dir, model_dir)
        handle = load_live_handle(registry, cfg.model)
        llm = HFEngine(handle, cfg.limits, cfg.model.max_batch_size)
        closers.append(llm.close)
        log.info("model %s (%s) loaded from %s (torch threads %d)", handle.version, handle.kind, model_dir, threads)
        jobs = JobStore(redis)
        learning = OnlineLearning(cfg.learning, cfg.model, jobs, registry, llm, learning_cache_dir(cfg.data_dir))
        if cfg.learning.enabled:
            learning.start()
            closers.append(learning.stop)

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
            retrieval = cfg.memory.retrieval
            memory_hook = MemoryHook(longterm, llm, retrieval.top_k, retrieval.token_budget, retrieval.prompt_kinds)
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
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return Runtime(
        cfg=cfg,
        redis=redis,
        llm=llm,
        auth=Authenticator(cfg.auth, secret, api_key),
        limiter=RateLimiter(cfg.limits.rate_limit_per_minute),
        pipeline=pipeline,
        sessions=Sessions(working),
        bank=bank,
        events=events,
        longterm=longterm,
        learning=learning,
        closers=closers,
    )
