"""Assembling and running the gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dmha.runtime import DMHAConfig, RedisRateLimiter, Runtime, build_runtime
from dmha_proto.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    learning_pb2,
    learning_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    metacognition_pb2,
    metacognition_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from dmha_server.auth import AuthServicer
from dmha_server.chat import ChatServicer
from dmha_server.health import watch_health
from dmha_server.interceptors import ServiceInterceptor
from dmha_server.knowledge import KnowledgeServicer
from dmha_server.learning import FeedbackServicer, ModelServicer
from dmha_server.memory import MemoryServicer
from dmha_server.metacognition import MetacognitionServicer
from dmha_server.metrics import start_metrics_server
from dmha_server.sessions import SessionServicer

__all__ = ["create_server", "max_request_bytes", "serve", "service_names"]

log = logging.getLogger(__name__)

# Replies may be large (a whole KB listing); requests never need to be.
_MAX_SEND = 64 * 1024 * 1024
# Room for a request's ids, options and framing beside its largest text field.
_REQUEST_OVERHEAD = 64 * 1024


def max_request_bytes(cfg: DMHAConfig) -> int:
    """The largest request message accepted, derived from the configured text limits.

    gRPC refuses a bigger message with RESOURCE_EXHAUSTED before decoding it (and
    before authentication), so an anonymous caller cannot make the server buffer and
    parse megabytes.

    Args:
        cfg: the whole config.

    Returns:
        Bytes: the largest text limit plus room for the other fields.
    """
    largest = max(
        cfg.limits.max_message_bytes,
        cfg.knowledge.max_statement_bytes,
        cfg.memory.longterm.max_text_bytes,
        cfg.memory.retrieval.max_query_bytes,
        2 * cfg.learning.max_feedback_bytes,  # input and target travel together
        cfg.learning.max_insights_bytes,
    )
    return largest + _REQUEST_OVERHEAD


def service_names(runtime: Runtime) -> list[str]:
    """The DMHA services this runtime serves (their health follows the whole server's).

    Args:
        runtime: the running components (long-term memory may be off).

    Returns:
        Full service names, e.g. ``dmha.v1.ChatService``.
    """
    descriptors = [chat_pb2, session_pb2, auth_pb2, knowledge_pb2, metacognition_pb2, learning_pb2]
    if runtime.longterm is not None:
        descriptors.append(memory_pb2)
    return [svc.full_name for d in descriptors for svc in d.DESCRIPTOR.services_by_name.values()]


async def create_server(runtime: Runtime, cfg: DMHAConfig) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build (not start) the server with every service, health and reflection.

    Args:
        runtime: the running components.
        cfg: the whole config (``server`` section: host and port; 0 = any free port).

    Returns:
        ``(server, bound port, health servicer)``.
    """
    server = grpc.aio.server(
        interceptors=[
            ServiceInterceptor(
                runtime.auth,
                runtime.limiter,
                RedisRateLimiter(runtime.redis, cfg.limits.token_requests_per_minute, "issue-token"),
            )
        ],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes(cfg)),
            ("grpc.max_send_message_length", _MAX_SEND),
        ],
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(runtime.pipeline, cfg.limits), server)
    session_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(runtime.sessions), server)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(runtime.auth), server)
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeServicer(runtime.bank), server)
    metacognition_pb2_grpc.add_MetacognitionServiceServicer_to_server(MetacognitionServicer(runtime.events), server)
    learning_pb2_grpc.add_FeedbackServiceServicer_to_server(
        FeedbackServicer(runtime.learning, cfg.server.watch_poll_seconds), server
    )
    learning_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(runtime.learning), server)
    if runtime.longterm is not None:
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(runtime.longterm), server)
    services = service_names(runtime)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{cfg.server.host}:{cfg.server.port}")
    return server, port, health_servicer


async def serve(cfg: DMHAConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Start everything and serve until SIGINT/SIGTERM.

    Args:
        cfg: the whole config.
        on_ready: called with the bound port once the server accepts calls.
    """
    loop = asyncio.get_running_loop()
    runtime = await asyncio.to_thread(build_runtime, cfg, lambda line: log.info("%s", line), loop)
    try:
        server, port, health_servicer = await create_server(runtime, cfg)
        await server.start()
        if cfg.server.metrics_port is not None:
            mport = start_metrics_server(cfg.server.host, cfg.server.metrics_port)
            log.info("Prometheus metrics on http://%s:%d/metrics", cfg.server.host, mport)
        log.info("DMHA serving on %s:%d (admin API key in %s)", cfg.server.host, port, cfg.data_dir / "secrets.json")
        if on_ready:
            on_ready(port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(watch_health(runtime, health_servicer, service_names(runtime)))
        await stop.wait()
        log.info("shutting down (grace %.0fs)", cfg.server.grace_seconds)
        watcher.cancel()
        await server.stop(cfg.server.grace_seconds)
    finally:
        runtime.close()
