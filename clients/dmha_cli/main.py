"""The ``dmha`` command: chat and manage state; with the server installed, also run it.

Client commands talk gRPC to ``--address`` (``$DMHA_ADDRESS``) with ``--token``
(``$DMHA_TOKEN``). On an RPC error a client command prints the status name and
the server's message to stderr and exits non-zero.

Server commands (``serve``, ``setup``, ``config``, ``token``) are not part of the
client distribution: any installed package may add commands through the
``dmha.cli`` entry-point group (a ``register(subparsers)`` callable); the server
package registers its commands that way, so this module never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from dmha_cli import chat_cmd, gateway_cmd, kb_cmd, learning_cmd, memory_cmd
from dmha_client.errors import DMHAError

__all__ = ["PLUGIN_GROUP", "build_parser", "main"]

PLUGIN_GROUP = "dmha.cli"
"""Entry-point group of callables ``register(subparsers)`` that add commands."""


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="HOST:PORT", help="server address (env DMHA_ADDRESS, default 127.0.0.1:50051)")
    p.add_argument("--token", metavar="JWT", help="bearer token (env DMHA_TOKEN; mint one with `dmha token`)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with help for every command."""
    parser = argparse.ArgumentParser(
        prog="dmha",
        description="DMHA: a conversational agent with working memory, long-term memory, "
        "a Z3 knowledge base and online learning, served over gRPC.",
        epilog="Quick start (with the server installed): `dmha serve` in one terminal; then "
        "`export DMHA_TOKEN=$(dmha token --user alice)` and `dmha chat` in another "
        "(or `dmha gateway` and a browser at http://127.0.0.1:8080/).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        plugin.load()(sub)

    p = sub.add_parser("chat", help="interactive streaming chat (reads stdin line by line when piped)")
    _client_flags(p)
    p.add_argument("--session", default="", help="continue this session id")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default 1)")
    p.add_argument("--max-new-tokens", type=int, help="reply length cap")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--stop", action="append", metavar="TEXT", help="end the reply before TEXT (repeat: up to 4)")
    p.add_argument("-m", "--message", help="send one message, print the reply, exit")
    p.set_defaults(func=chat_cmd.chat)

    p = sub.add_parser("health", help="print the server's health status (exit 0 when SERVING)")
    _client_flags(p)
    p.add_argument(
        "--parts",
        action="store_true",
        help="also each part the server probes: redis, milvus, executor, generation, disk",
    )
    p.set_defaults(func=chat_cmd.health)

    p = sub.add_parser("sessions", help="list your sessions")
    _client_flags(p)
    p.set_defaults(func=chat_cmd.sessions)

    kb_cmd.add_parser(sub, _client_flags)
    memory_cmd.add_parser(sub, _client_flags)
    learning_cmd.add_parsers(sub, _client_flags)
    gateway_cmd.add_parser(sub)
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
