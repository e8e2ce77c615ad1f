"""The server's commands of the ``dmha`` console script: serve, worker, setup, config, token, report.

They read the local config (and its secrets), so they ship with the server, not
with the client SDK. The ``dmha`` command (``dmha_cli.main``, in the client
distribution) finds :func:`register` through the ``dmha.cli`` entry-point group
that this project declares, so a client-only install offers the client commands
and a full install offers all of them, without the client importing the server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runtime loads the model stack: imported only when a command runs
    from dmha.runtime import DMHAConfig


__all__ = ["load_from_args", "register", "serve", "setup", "show_config", "token", "worker"]


def load_from_args(args: argparse.Namespace) -> DMHAConfig:
    """The config from ``--config`` plus the flags that override it."""
    from dmha.runtime import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if server:
        overrides["server"] = server
    if getattr(args, "no_train", False):
        overrides["learning"] = {"role": "serve"}
    return load_config(args.config, **overrides)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    from dmha.runtime import configure_logging
    from dmha_server.app import serve as run_server

    cfg = load_from_args(args)
    configure_logging(cfg.logging)

    def ready(port: int) -> None:
        # One line on stdout for humans and scripts (tests wait for it).
        print(f"DMHA ready on {cfg.server.host}:{port}", flush=True)

    asyncio.run(run_server(cfg, on_ready=ready))
    return 0


def worker(args: argparse.Namespace) -> int:
    """Train queued jobs until interrupted; serve nothing (``learning.role = worker``)."""
    import signal
    import threading

    from dmha.runtime import build_worker, configure_logging

    cfg = load_from_args(args)
    configure_logging(cfg.logging)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime = build_worker(cfg, lambda line: print(line, file=sys.stderr, flush=True))
    try:
        # One line on stdout for humans and scripts (tests wait for it).
        print(f"DMHA worker {runtime.jobs.owner} ready", flush=True)
        stop.wait()
    finally:
        runtime.close()
    return 0


def setup(args: argparse.Namespace) -> int:
    """Prepare the model and its learning references (idempotent); print the model folder."""
    from dmha.runtime import ensure_model, prepare_references, set_torch_threads

    cfg = load_from_args(args)
    set_torch_threads(cfg.model.threads)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    path = ensure_model(cfg.model.path, cfg.data_dir, say)
    prepare_references(path, cfg.data_dir, cfg.model, cfg.learning, lambda m: say(f"learning references: {m}"))
    print(path)
    return 0


def token(args: argparse.Namespace) -> int:
    """Mint a token with the locally configured secret; prints only the token."""
    from dmha.runtime import Authenticator, load_secrets

    cfg = load_from_args(args)
    secret, api_key = load_secrets(cfg.auth, cfg.data_dir)
    jwt, _ = Authenticator(cfg.auth, secret, api_key).issue(args.user, tuple(args.role or ["user"]), args.ttl)
    print(jwt)
    return 0


def show_config(args: argparse.Namespace) -> int:
    """Print the effective (or default) config as commented YAML."""
    from dmha.runtime import DMHAConfig, render_yaml

    cfg = DMHAConfig() if args.defaults else load_from_args(args)
    print("# DMHA configuration. Every key is optional; environment overrides use")
    print("# DMHA_<SECTION>__<KEY>, e.g. DMHA_REDIS__URL=redis://host:6379/0.")
    print(render_yaml(cfg))
    return 0


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config layered over the defaults")
    p.add_argument("--data-dir", metavar="DIR", help="state directory (default ~/.local/share/dmha)")


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print a DMHA error (bad config, backend cannot start) as one line, exit 1."""

    def run(args: argparse.Namespace) -> int:
        from dmha.runtime import errors

        try:
            return func(args)
        except errors.DMHAError as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: Any) -> None:
    """Add the server commands to the ``dmha`` command line (the ``dmha.cli`` entry point).

    Args:
        sub: the ``dmha`` parser's subparsers action (``add_subparsers()``'s result).
    """
    p = sub.add_parser("serve", help="run the gRPC server (prepares the default model on first run)")
    _server_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 = any free port)")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="a replica that trains nothing: `dmha worker` processes train, and this one "
        "follows the live version they deploy (sets learning.role = serve)",
    )
    p.set_defaults(func=_guard(serve))

    p = sub.add_parser(
        "worker",
        help="train queued feedback jobs and deploy them to every replica; serves nothing "
        "(share REDIS_URL, MILVUS_URI and DMHA_LEARNING__REGISTRY_DIR with the replicas)",
    )
    _server_flags(p)
    p.set_defaults(func=_guard(worker))

    p = sub.add_parser(
        "setup", help="prepare the default model (download + convert) and its learning references once, then exit"
    )
    _server_flags(p)
    p.set_defaults(func=_guard(setup))

    p = sub.add_parser("config", help="print the effective configuration as commented YAML")
    _server_flags(p)
    p.add_argument("--defaults", action="store_true", help="ignore files and environment: the built-in defaults")
    p.set_defaults(func=_guard(show_config))

    p = sub.add_parser("token", help="mint a JWT from the local config's secret and print it alone")
    _server_flags(p)
    p.add_argument("--user", required=True, help="user id (the token's subject)")
    p.add_argument(
        "--role", action="append", choices=["user", "trainer", "admin"], help="role; repeat for several (default user)"
    )
    p.add_argument("--ttl", type=int, default=0, help="lifetime in seconds (default from config)")
    p.set_defaults(func=_guard(token))

    from dmha_server.report_cmd import add_parser as add_report

    add_report(sub, _server_flags, _guard)
