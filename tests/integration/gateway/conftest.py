"""A real gateway (uvicorn on 127.0.0.1, port 0) in front of a real server (tests.integration.conftest).

Both run on the test's event loop; callers speak real HTTP to the gateway, which
speaks real gRPC to the server.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from dmha_gateway import GatewaySettings
from dmha_gateway.serve import listening_socket, uvicorn_config
from tests.integration.conftest import LiveServer, integration_config, start_live_server


@dataclass
class LiveGateway:
    url: str
    """``http://127.0.0.1:<port>`` (no trailing slash)."""
    server: LiveServer | None

    def token(self, user: str, *roles: str) -> str:
        assert self.server is not None, "this gateway has no server behind it"
        return self.server.token(user, *roles)


async def start_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """Serve the gateway app with uvicorn on a free port, as ``dmha gateway`` does; yields its base URL."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(settings, "warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        await task  # raises the startup error, if any
        raise AssertionError("the gateway did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def start_stack(cfg: Any, **settings: Any) -> AsyncIterator[LiveGateway]:
    """A server for ``cfg`` and a gateway in front of it."""
    async for server in start_live_server(cfg):
        async for url in start_gateway(GatewaySettings(address=server.address, timeout=120, **settings)):
            yield LiveGateway(url, server)


@pytest.fixture
async def gateway(tmp_path, tiny_model_dir) -> AsyncIterator[LiveGateway]:
    """Gateway + server on the tiny model; a 64 KiB body limit (to reach 413 cheaply)."""
    async for gw in start_stack(integration_config(tmp_path, tiny_model_dir), max_body_bytes=64 * 1024):
        yield gw


@dataclass
class HTTPReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> HTTPReply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return HTTPReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return HTTPReply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


async def http(
    method: str,
    url: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HTTPReply:
    """One plain HTTP request (urllib on a worker thread: the servers share this loop)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    body = raw
    if json_body is not None:
        body = json.dumps(json_body).encode()
    if body is not None:
        all_headers.setdefault("Content-Type", "application/json")
    return await asyncio.to_thread(_request, method, url, body, all_headers)
