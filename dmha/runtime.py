"""The composition root: builds every component from the config, once.

The server's servicers receive the parts they need from a :class:`Runtime`;
nothing else constructs components, so choosing a backend happens here only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmha.auth.ratelimit import RateLimiter
from dmha.auth.tokens import Authenticator, load_secrets
from dmha.config import DMHAConfig
from dmha.context import ChatPipeline, TurnHook
from dmha.executor import configure_executor, shutdown_executor
from dmha.llm.engine import HFEngine, load_eager_handle, set_torch_threads
from dmha.llm.model_store import ensure_model
from dmha.memory.working import RedisWorkingMemory
from dmha.redis_connection import RedisConnection
from dmha.sessions import Sessions

__all__ = ["Runtime", "build_runtime"]

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
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Stop everything, newest first; safe to call twice."""
        while self.closers:
            closer = self.closers.pop()
            try:
                closer()
            except Exception:  # shutdown must go on; the error is logged, not hidden
                log.exception("error while shutting down")


def build_runtime(cfg: DMHAConfig, progress: Callable[[str], None] | None = None) -> Runtime:
    """Start every component the config asks for.

    Args:
        cfg: the whole config.
        progress: receives a line per slow start-up stage (model preparation).

    Returns:
        The running components.

    Raises:
        StartupError: a backend cannot be opened (the message names it).
    """
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    configure_executor(cfg.server.executor_threads)
    threads = set_torch_threads(cfg.model.threads)
    closers: list[Callable[[], Any]] = [shutdown_executor]

    redis = RedisConnection(cfg.redis, cfg.data_dir)
    closers.append(redis.close)
    try:
        model_dir = ensure_model(cfg.model.path, cfg.data_dir, progress)
        handle = load_eager_handle(model_dir, cfg.model)
        llm = HFEngine(handle, cfg.limits, cfg.model.max_batch_size)
        closers.append(llm.close)
        log.info("model %s loaded from %s (torch threads %d)", handle.version, model_dir, threads)

        secret, api_key = load_secrets(cfg.auth, cfg.data_dir)
        working = RedisWorkingMemory(redis, cfg.memory.working)
        hooks: list[TurnHook] = []
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
        closers=closers,
    )
