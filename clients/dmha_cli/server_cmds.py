"""Commands that run on the server host: serve, setup, token."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from dmha.config import DMHAConfig, load_config

__all__ = ["load_from_args", "serve", "setup", "show_config", "token"]


def load_from_args(args: argparse.Namespace) -> DMHAConfig:
    """The config from ``--config`` plus the flags that override it."""
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
    return load_config(args.config, **overrides)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    from dmha_server.app import serve as run_server

    from dmha.logs import configure_logging

    cfg = load_from_args(args)
    configure_logging(cfg.logging)

    def ready(port: int) -> None:
        # One line on stdout for humans and scripts (tests wait for it).
        print(f"DMHA ready on {cfg.server.host}:{port}", flush=True)

    asyncio.run(run_server(cfg, on_ready=ready))
    return 0


def setup(args: argparse.Namespace) -> int:
    """Prepare the default model (idempotent) and report where it is."""
    from dmha.llm.model_store import ensure_model

    cfg = load_from_args(args)
    path = ensure_model(cfg.model.path, cfg.data_dir, lambda line: print(line, file=sys.stderr, flush=True))
    print(path)
    return 0


def token(args: argparse.Namespace) -> int:
    """Mint a token with the locally configured secret; prints only the token."""
    from dmha.auth.tokens import Authenticator, load_secrets

    cfg = load_from_args(args)
    secret, api_key = load_secrets(cfg.auth, cfg.data_dir)
    jwt, _ = Authenticator(cfg.auth, secret, api_key).issue(args.user, tuple(args.role or ["user"]), args.ttl)
    print(jwt)
    return 0


def show_config(args: argparse.Namespace) -> int:
    """Print the effective (or default) config as commented YAML."""
    from dmha.config import DMHAConfig, render_yaml

    cfg = DMHAConfig() if args.defaults else load_from_args(args)
    print("# DMHA configuration. Every key is optional; environment overrides use")
    print("# DMHA_<SECTION>__<KEY>, e.g. DMHA_REDIS__URL=redis://host:6379/0.")
    print(render_yaml(cfg))
    return 0
