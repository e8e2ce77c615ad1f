"""The ``dmha`` command: run the server, mint tokens, chat, and manage state.

Server-side commands (``serve``, ``token``, ``setup``) read the config; client
commands talk gRPC to ``--address`` (``$DMHA_ADDRESS``) with ``--token``
(``$DMHA_TOKEN``). On an RPC error a client command prints the status name and
the server's message to stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dmha.errors import DMHAError
from dmha_cli import chat_cmd, kb_cmd, learning_cmd, memory_cmd, server_cmds

__all__ = ["build_parser", "main"]


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config layered over the defaults")
    p.add_argument("--data-dir", metavar="DIR", help="state directory (default ~/.local/share/dmha)")


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="HOST:PORT", help="server address (env DMHA_ADDRESS, default 127.0.0.1:50051)")
    p.add_argument("--token", metavar="JWT", help="bearer token (env DMHA_TOKEN; mint one with `dmha token`)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with help for every command."""
    parser = argparse.ArgumentParser(
        prog="dmha",
        description="DMHA: a conversational agent with working memory, long-term memory, "
        "a Z3 knowledge base and online learning, served over gRPC.",
        epilog="Quick start: `dmha serve` in one terminal; then "
        "`export DMHA_TOKEN=$(dmha token --user alice)` and `dmha chat` in another.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gRPC server (prepares the default model on first run)")
    _server_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 = any free port)")
    p.set_defaults(func=server_cmds.serve)

    p = sub.add_parser("setup", help="prepare the default model once (download + convert), then exit")
    _server_flags(p)
    p.set_defaults(func=server_cmds.setup)

    p = sub.add_parser("config", help="print the effective configuration as commented YAML")
    _server_flags(p)
    p.add_argument("--defaults", action="store_true", help="ignore files and environment: the built-in defaults")
    p.set_defaults(func=server_cmds.show_config)

    p = sub.add_parser("token", help="mint a JWT from the local config's secret and print it alone")
    _server_flags(p)
    p.add_argument("--user", required=True, help="user id (the token's subject)")
    p.add_argument("--role", action="append", choices=["user", "trainer", "admin"],
                   help="role; repeat for several (default user)")
    p.add_argument("--ttl", type=int, default=0, help="lifetime in seconds (default from config)")
    p.set_defaults(func=server_cmds.token)

    p = sub.add_parser("chat", help="interactive streaming chat (reads stdin line by line when piped)")
    _client_flags(p)
    p.add_argument("--session", default="", help="continue this session id")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default 1)")
    p.add_argument("--max-new-tokens", type=int, help="reply length cap")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("-m", "--message", help="send one message, print the reply, exit")
    p.set_defaults(func=chat_cmd.chat)

    p = sub.add_parser("health", help="print the server's health status (exit 0 when SERVING)")
    _client_flags(p)
    p.set_defaults(func=chat_cmd.health)

    p = sub.add_parser("sessions", help="list your sessions")
    _client_flags(p)
    p.set_defaults(func=chat_cmd.sessions)

    kb_cmd.add_parser(sub, _client_flags)
    memory_cmd.add_parser(sub, _client_flags)
    learning_cmd.add_parsers(sub, _client_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dmha`` console script.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DMHAError as exc:
        status = getattr(exc, "status", type(exc).__name__)
        print(f"{status}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
