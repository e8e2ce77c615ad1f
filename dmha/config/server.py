"""Sections of the serving edge: the gRPC server, request limits, auth, health probes, logging."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from dmha.config.section import Section

__all__ = ["AuthConfig", "HealthConfig", "LimitsConfig", "LoggingConfig", "ServerConfig"]


class ServerConfig(Section):
    host: str = "127.0.0.1"
    """Interface the gRPC server binds to."""
    port: int = Field(50051, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""
    metrics_port: int | None = Field(9464, ge=0, le=65535)
    """Port of the Prometheus ``/metrics`` HTTP endpoint; None disables it."""
    grace_seconds: float = Field(5.0, ge=0)
    """How long in-flight RPCs may finish on shutdown."""
    executor_threads: int = Field(4, ge=1, le=64)
    """Threads of the one executor that runs blocking work (torch, z3, pymilvus)."""
    executor_per_user: int = Field(2, ge=1, le=64)
    """Most executor threads one user's requests may hold at once (capped at
    ``executor_threads - 1``); their further calls wait without holding a thread, so
    one user cannot take the executor from everyone else."""
    gil_switch_interval_ms: float = Field(0.5, gt=0, le=100)
    """How long a thread running Python may keep the interpreter lock while another
    waits for it (``sys.setswitchinterval``). The generation thread gives the lock up
    at every torch op and waits for it again after; at Python's default of 5 ms, one
    thread of pure-Python work (deriving a user's knowledge-base consequences, parsing
    a large request) made every op wait: decoding ran ~3x slower for everyone."""
    watch_poll_seconds: float = Field(0.5, gt=0, le=10)
    """WatchJob reads a job's events in non-blocking slices this far apart; no thread
    is held while it waits, so idle watches cost nothing."""


class LimitsConfig(Section):
    max_message_bytes: int = Field(8192, ge=1)
    """Largest user message accepted by Chat (UTF-8 bytes)."""
    max_new_tokens: int = Field(256, ge=1)
    """Upper bound on generated tokens per reply."""
    default_new_tokens: int = Field(128, ge=1)
    """Generated tokens when the request does not say."""
    rate_limit_per_minute: int = Field(120, ge=0)
    """Requests per user per minute; 0 disables the limit."""
    token_requests_per_minute: int = Field(30, ge=0)
    """IssueToken calls per client address per minute (an admin-key guessing brake);
    0 disables the limit."""
    max_queued_requests: int = Field(64, ge=1)
    """Generation requests waiting at once before RESOURCE_EXHAUSTED."""


class AuthConfig(Section):
    jwt_secret: SecretStr | None = None
    """HS256 secret; None = generated once and kept in ``<data_dir>/secrets.json``."""
    admin_api_key: SecretStr | None = None
    """Key required by IssueToken; None = generated once into ``<data_dir>/secrets.json``."""
    token_ttl_seconds: int = Field(24 * 3600, ge=1)
    """Lifetime of issued tokens."""
    issuer: str = "dmha"
    """``iss`` claim written and required."""


class HealthConfig(Section):
    interval_seconds: float = Field(1.0, gt=0, le=60)
    """How often the server probes its parts (Redis, Milvus, executor, generation, disk)."""
    probe_timeout_seconds: float = Field(1.0, gt=0, le=30)
    """How long one round of probes may take; a part that has not answered failed."""
    failures_to_down: int = Field(2, ge=1, le=10)
    """Failed rounds in a row before a part is reported down (one slow answer on a
    saturated machine is not an outage)."""
    stall_seconds: float = Field(10.0, gt=0)
    """The executor counts as wedged when no thread has been free for this long."""
    generation_stall_seconds: float = Field(120.0, gt=0)
    """The generation scheduler counts as stuck when one pass runs this long. A pass
    may legitimately take a while: prefilling a full-size (8 KiB, ~2,100-token) message
    took 33 s on 2 busy CPU cores."""
    min_free_disk_mb: int = Field(16, ge=0)
    """The data dir's disk counts as full below this much free space (MiB)."""


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""
    json_format: bool = False
    """One JSON object per line instead of plain text."""
