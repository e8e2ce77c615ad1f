"""``dmha kb``: the caller's knowledge base from the command line."""

from __future__ import annotations

import argparse
import sys

from dmha_cli.chat_cmd import client_from_args

__all__ = ["add_parser"]


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    with open(source, encoding="utf-8") as fh:
        return fh.read()


def tell(args: argparse.Namespace) -> int:
    text = " ".join(args.statement) if args.statement else _read(args.file)
    with client_from_args(args) as client:
        resp = client.kb_tell(text, scope=args.scope or "", session_id=args.session or "")
    for s in resp.accepted:
        print(f"accepted  {s.id}  {s.text}")
    for group, label in ((resp.rejected, "rejected"), (resp.demoted, "demoted")):
        for r in group:
            print(f"{label:9} {r.statement.id}  {r.statement.text}\n          because {r.reason}")
            for c in r.conflicts_with:
                print(f"          conflicts with {c.id}  {c.text}")
    return 0 if not resp.rejected else 3


def ask(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        resp = client.kb_ask(" ".join(args.statement), session_id=args.session or "")
    print(resp.verdict + (f" ({resp.reason})" if resp.reason else ""))
    for s in resp.support:
        print(f"  because {s.id}  {s.text}")
    return 0


def list_(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for s in client.kb_list(kind=args.kind or "", status=args.status or ""):
            print(f"{s.id}  {s.status:8}  {s.text}")
    return 0


def explain(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        resp = client.kb_explain(args.id)
    print(f"{resp.statement.id}  {resp.statement.status}  {resp.statement.text}")
    print(resp.explanation)
    for s in resp.related:
        print(f"  conflicts with {s.id}  {s.text}")
    return 0


def retract(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.kb_retract(args.id)
    print(f"retracted {args.id}")
    return 0


def conflicts(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for r in client.kb_conflicts():
            print(f"{r.statement.id}  {r.statement.text}\n  because {r.reason}")
    return 0


def add_parser(sub: argparse._SubParsersAction, client_flags) -> None:
    """Register ``dmha kb`` and its subcommands."""
    kb = sub.add_parser("kb", help="knowledge base: tell, ask, list, explain, retract, conflicts")
    kbsub = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    p = kbsub.add_parser("tell", help="add fact:/deny:/rule:/attr: statements (args, a file, or - for stdin)")
    client_flags(p)
    p.add_argument("statement", nargs="*", help="statement text (omit to read --file)")
    p.add_argument("-f", "--file", default="-", help="file of statements, one per line (default stdin)")
    p.add_argument("--scope", choices=["session", "user", "global"], help="default scope (global: admin only)")
    p.add_argument("--session", help="session id for session-scope statements")
    p.set_defaults(func=tell)

    p = kbsub.add_parser("ask", help='decide a literal, e.g. dmha kb ask "bob.smart = true"')
    client_flags(p)
    p.add_argument("statement", nargs="+")
    p.add_argument("--session", help="include this session's statements")
    p.set_defaults(func=ask)

    p = kbsub.add_parser("list", help="list your statements")
    client_flags(p)
    p.add_argument("--kind", choices=["fact", "deny", "rule", "attr"])
    p.add_argument("--status", choices=["accepted", "rejected"])
    p.set_defaults(func=list_)

    for name, func, text in (
        ("explain", explain, "why a statement holds or was rejected"),
        ("retract", retract, "remove a statement"),
    ):
        p = kbsub.add_parser(name, help=text)
        client_flags(p)
        p.add_argument("id")
        p.set_defaults(func=func)

    p = kbsub.add_parser("conflicts", help="rejected statements with their conflict cores")
    client_flags(p)
    p.set_defaults(func=conflicts)
