"""A real server for integration tests: real redis-server, real gRPC on port 0, tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dmha.config import DMHAConfig, load_config
from dmha.runtime import Runtime, build_runtime
from dmha_client import AsyncDMHAClient, RetryPolicy
from dmha_server.app import create_server


def integration_config(data_dir: Path, model_path: Path, **overrides) -> DMHAConfig:
    """Embedded defaults with test-friendly limits; no metrics port."""
    base = {
        "data_dir": str(data_dir),
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": None, "grace_seconds": 0},
        "model": {"path": str(model_path), "device": "cpu", "threads": 1, "max_context_tokens": 1024},
        "limits": {"max_message_bytes": 2000, "default_new_tokens": 16, "rate_limit_per_minute": 600},
        "memory": {"longterm": {"enabled": False}},
        "learning": {"enabled": False},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(None, **base)


@dataclass
class LiveServer:
    runtime: Runtime
    address: str

    def token(self, user: str, *roles: str) -> str:
        return self.runtime.auth.issue(user, roles or ("user",))[0]

    def client(self, user: str | None = "alice", *roles: str, retry: int = 1) -> AsyncDMHAClient:
        token = self.token(user, *roles) if user else ""
        return AsyncDMHAClient(self.address, token, timeout=60, retry=RetryPolicy(attempts=retry, initial=0.3))


async def start_live_server(cfg: DMHAConfig) -> AsyncIterator[LiveServer]:
    runtime = build_runtime(cfg)
    server, port, _health = await create_server(runtime, cfg)
    await server.start()
    try:
        yield LiveServer(runtime, f"127.0.0.1:{port}")
    finally:
        await server.stop(0)
        runtime.close()


@pytest.fixture
async def live(tmp_path, tiny_model_dir) -> AsyncIterator[LiveServer]:
    async for server in start_live_server(integration_config(tmp_path, tiny_model_dir)):
        yield server
