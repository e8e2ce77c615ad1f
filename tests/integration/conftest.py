"""A real server for integration tests: real redis-server, real gRPC on port 0, tiny model.

Server tests speak the asyncio client's API; with ``client_kind == "sync"`` the same
calls go through the blocking :class:`DMHAClient`, each on a worker thread (the server
shares the test's event loop, so a blocking call on it would deadlock). Tests that use
the ``live`` fixture therefore run once per client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from dmha.config import DMHAConfig, RedisConfig, load_config
from dmha.redis_connection import RedisConnection
from dmha.runtime import Runtime, build_runtime
from dmha_client import AsyncDMHAClient, DMHAClient, RetryPolicy
from dmha_server.app import create_server, service_names
from dmha_server.health import watch_health
from tests.integration.redis_cluster import RedisClusterProcesses


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


ClientKind = Literal["async", "sync"]

# Sync client methods that return an iterator at once (the RPC runs as it is iterated).
_STREAMING = frozenset({"chat_stream", "memory_export", "watch_job"})
_END = object()


class _ThreadedIterator:
    """An async iterator over a blocking one; other attributes (``result``, ``cancel``) pass through."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._it: Iterator[Any] | None = None

    def __aiter__(self) -> _ThreadedIterator:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = iter(self._source)
        item = await asyncio.to_thread(next, self._it, _END)
        if item is _END:
            raise StopAsyncIteration
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class SyncClientInThreads:
    """The blocking client behind the asyncio client's API (for parametrised server tests)."""

    def __init__(self, client: DMHAClient) -> None:
        object.__setattr__(self, "_client", client)

    async def __aenter__(self) -> SyncClientInThreads:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        if name in _STREAMING:
            return lambda *a, **kw: _ThreadedIterator(attr(*a, **kw))

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)  # e.g. ``c.token = ...``


@dataclass
class LiveServer:
    runtime: Runtime
    address: str
    client_kind: ClientKind = "async"

    def token(self, user: str, *roles: str) -> str:
        return self.runtime.auth.issue(user, roles or ("user",))[0]

    def client(self, user: str | None = "alice", *roles: str, retry: int = 1) -> Any:
        """A client of ``client_kind`` for ``user`` (None: no token), with the asyncio API."""
        token = self.token(user, *roles) if user else ""
        policy = RetryPolicy(attempts=retry, initial=0.3)
        if self.client_kind == "sync":
            return SyncClientInThreads(DMHAClient(self.address, token, timeout=60, retry=policy))
        return AsyncDMHAClient(self.address, token, timeout=60, retry=policy)


async def start_live_server(cfg: DMHAConfig, client_kind: ClientKind = "async") -> AsyncIterator[LiveServer]:
    """What ``dmha serve`` runs, on the test's event loop: the server and its health watch."""
    runtime = build_runtime(cfg)
    server, port, health = await create_server(runtime, cfg)
    await server.start()
    watcher = asyncio.create_task(watch_health(runtime, health, service_names(runtime)))
    try:
        yield LiveServer(runtime, f"127.0.0.1:{port}", client_kind)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await server.stop(0)
        runtime.close()


@pytest.fixture(params=["async", "sync"])
def client_kind(request) -> ClientKind:
    """Which SDK client the server tests speak through."""
    return request.param


@pytest.fixture
async def live(tmp_path, tiny_model_dir, client_kind) -> AsyncIterator[LiveServer]:
    async for server in start_live_server(integration_config(tmp_path, tiny_model_dir), client_kind):
        yield server


# The tiny random model cannot pass real learning thresholds: tests that train on it
# are about the plumbing (jobs, registry, swaps, pages), never about edit quality.
RELAXED_LEARNING: dict[str, object] = {
    "enabled": True,
    "min_efficacy": 0.0,
    "min_generalisation": 0.0,
    "min_locality": 0.0,
    "max_kl_mean": 1e9,
    "max_kl_prompt": 1e9,
    "max_perplexity_increase": 1e9,
    "edit_layers": [0, 1],
    "null_threshold": 0.5,
    "min_key_share": 0.0,
    "stop_margin": 0.0,
    "steps": 2,
    "paraphrases": 1,
    "retain_per_step": 1,
    "freeze_device": "cpu",
}


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """A real three-master Redis Cluster on loopback, started once when first asked for."""
    nodes = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(params=["single", "cluster"])
def shared_redis(request, tmp_path) -> Iterator[RedisConnection]:
    """The Redis several processes share: one redis-server, or a three-master cluster
    (emptied first). Tests using it run once against each."""
    if request.param == "single":
        conn = RedisConnection(RedisConfig(), tmp_path)
    else:
        nodes = request.getfixturevalue("redis_cluster")
        nodes.flush()
        conn = RedisConnection(RedisConfig(url=nodes.url), tmp_path)
    try:
        yield conn
    finally:
        conn.close()
