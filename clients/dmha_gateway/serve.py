"""Run the gateway under uvicorn (what ``dmha gateway`` does)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from dmha_gateway.app import GatewaySettings, create_app

__all__ = ["run_gateway"]


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(url)

    # log_config=None: uvicorn logs through the format configured above, not its own.
    config = uvicorn.Config(create_app(settings), log_level=log_level, log_config=None, access_log=False, lifespan="on")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the
    # handler it found: with this one the process then exits 0, like `dmha serve`.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
