"""``dmha gateway``: the OpenAI-compatible HTTP API and the web chat page.

Starlette and uvicorn are imported only when the command runs, so a client install
without the ``gateway`` extra still offers every other command.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_parser", "gateway"]


def gateway(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted."""
    try:
        from dmha_gateway.app import GatewaySettings
        from dmha_gateway.serve import run_gateway
    except ImportError as exc:
        print(f"the gateway needs {exc.name}: pip install 'dmha-client[gateway]'", file=sys.stderr)
        return 1
    target = args.address or os.environ.get("DMHA_ADDRESS") or "127.0.0.1:50051"
    settings = GatewaySettings(
        address=target, max_body_bytes=args.max_body_bytes, allow_origins=tuple(args.allow_origin or ())
    )

    def ready(url: str) -> None:
        # One line on stdout for humans and scripts (tests and `make serve` wait for it).
        print(f"DMHA gateway on {url} -> gRPC {target}. Open {url} and log in with `dmha token`'s output.", flush=True)

    try:
        run_gateway(settings, args.host, args.port, args.log_level, ready)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """Add ``gateway`` to the ``dmha`` command line.

    Args:
        sub: the ``dmha`` parser's subparsers action.
    """
    p = sub.add_parser(
        "gateway",
        help="serve the OpenAI-compatible HTTP API and the web chat page (a gRPC client of the server)",
        description="An HTTP gateway to a DMHA server: POST /v1/chat/completions and GET /v1/models "
        "(OpenAI-compatible; bearer DMHA tokens), a web chat page at /, /healthz and /metrics. "
        "It holds no state; start the server with `dmha serve` (`make serve` starts both).",
    )
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--address", metavar="HOST:PORT", help="DMHA gRPC server (env DMHA_ADDRESS, default 127.0.0.1:50051)"
    )
    p.add_argument(
        "--allow-origin", action="append", metavar="URL", help="let pages of this origin call the API (CORS); repeat"
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    p.set_defaults(func=gateway)
