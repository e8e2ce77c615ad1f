"""Run the gateway under uvicorn (what ``dmha gateway`` does)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from dmha_gateway.app import GatewaySettings, create_app

__all__ = ["listening_socket", "run_gateway", "uvicorn_config"]

# httptools (C) parses requests and frames chunks in a fraction of h11's time: the
# HTTP leg is the gateway's whole share of a streamed token's latency.
HTTP_IMPL = "httptools"


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket whose accepted connections send small writes at once.

    asyncio turns Nagle's algorithm off only on sockets whose protocol is
    ``IPPROTO_TCP``; a socket made with protocol 0 (the default) keeps it on. With
    Nagle on, on a kept-alive connection (every OpenAI client keeps one) the first
    SSE chunk written after the response headers waits for the client's delayed ACK:
    +40 ms on the time to first token of every request after the first.

    Args:
        host: bind address (IPv4 or IPv6).
        port: port; 0 = any free port.

    Returns:
        The bound socket (not yet listening; uvicorn listens on it).

    Raises:
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Linux also copies this to accepted sockets: a second guard beside asyncio's.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(settings: GatewaySettings, log_level: str = "info") -> uvicorn.Config:
    """How uvicorn runs the gateway app (``dmha gateway`` and the tests alike).

    Args:
        settings: the gateway's settings.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.

    Returns:
        The config: httptools, no access log (the app logs each request once),
        the app's lifespan on (it opens the gRPC channel).
    """
    # log_config=None: uvicorn logs through the caller's logging set-up, not its own.
    return uvicorn.Config(
        create_app(settings), http=HTTP_IMPL, log_level=log_level, log_config=None, access_log=False, lifespan="on"
    )


def run_gateway(
    settings: GatewaySettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted.

    Args:
        settings: the gateway's settings (gRPC address, limits, CORS).
        host: bind address (IPv4 or IPv6).
        port: HTTP port; 0 = any free port.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        on_ready: called once listening, with the page's URL.

    Raises:
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    logging.basicConfig(
        level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Bind here: port 0 then means "any free port" and the ready callback can name it.
    sock = listening_socket(host, port)
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(url)

    config = uvicorn_config(settings, log_level)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the
    # handler it found: with this one the process then exits 0, like `dmha serve`.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
