"""``dmha memory``: search, export and forget long-term memories."""

from __future__ import annotations

import argparse
import sys

from dmha_cli.chat_cmd import client_from_args

__all__ = ["add_parser"]


def search(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for r in client.memory_search(" ".join(args.query), k=args.k):
            print(f"{r.score:.4f}  {r.memory.kind:15} {r.memory.id}  {r.memory.text[:100]!r}  ({r.why})")
    return 0


def export(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        with client_from_args(args) as client:
            for chunk in client.memory_export():
                out.write(chunk)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def forget(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        n = client.memory_delete(memory_id=args.id or "", session_id=args.session or "", everything=args.all)
    print(f"deleted {n} memories")
    return 0


def stats(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        st = client.memory_stats()
    print(
        f"{st.memories} memories in {st.clusters} clusters: "
        + ", ".join(f"{k} {v}" for k, v in sorted(st.by_kind.items()))
    )
    return 0


def add_parser(sub: argparse._SubParsersAction, client_flags) -> None:
    """Register ``dmha memory`` and its subcommands."""
    mem = sub.add_parser("memory", help="long-term memory: search, export, forget, stats")
    msub = mem.add_subparsers(dest="memory_command", required=True, metavar="ACTION")

    p = msub.add_parser("search", help="your memories most relevant to a query")
    client_flags(p)
    p.add_argument("query", nargs="+")
    p.add_argument("-k", type=int, default=10, help="results (default 10, at most 100)")
    p.set_defaults(func=search)

    p = msub.add_parser("export", help="all your memories as JSON lines")
    client_flags(p)
    p.add_argument("-o", "--output", default="-", help="file (default stdout)")
    p.set_defaults(func=export)

    p = msub.add_parser("forget", help="delete one memory, a session's, or all of yours")
    client_flags(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", help="one memory id")
    group.add_argument("--session", help="every memory of a session")
    group.add_argument("--all", action="store_true", help="every memory you have")
    p.set_defaults(func=forget)

    p = msub.add_parser("stats", help="counts of your memories")
    client_flags(p)
    p.set_defaults(func=stats)
