"""Client commands: the streaming chat REPL, health, sessions."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dmha_client import DMHAClient

__all__ = ["chat", "client_from_args", "health", "sessions"]

_HELP = "commands: /new (fresh session)  /history (this session's turns)  /quit"


def client_from_args(args: argparse.Namespace) -> DMHAClient:
    """A client for ``--address`` / ``--token`` (or their environment variables)."""
    return DMHAClient(args.address, args.token, timeout=None)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "stop": args.stop,
    }


def _say(client: DMHAClient, message: str, session: str, args: argparse.Namespace) -> str:
    """Stream one reply to stdout; returns the session id."""
    stream = client.chat_stream(message, session, **_options(args))
    printed = ""
    for delta in stream:
        printed += delta
        sys.stdout.write(delta)
        sys.stdout.flush()
    result = stream.result
    assert result is not None
    if result.text != printed:
        # The monitor corrected the streamed draft: show the final answer.
        sys.stdout.write(f"\n[corrected] {result.text}")
    sys.stdout.write("\n")
    reply = result.reply
    for note in (reply.notice, *reply.warnings):
        if note:
            print(f"  ({note})", file=sys.stderr)
    sys.stdout.flush()
    return result.session_id


def chat(args: argparse.Namespace) -> int:
    """Interactive (or piped) streaming chat."""
    session = args.session
    with client_from_args(args) as client:
        if args.message is not None:
            _say(client, args.message, session, args)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"DMHA chat at {client.address}. {_HELP}", file=sys.stderr)
        while True:
            if interactive:
                sys.stderr.write("you> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                return 0
            text = line.strip()
            if not text:
                continue
            if text == "/quit":
                return 0
            if text == "/new":
                session = ""
                print("(new session)", file=sys.stderr)
                continue
            if text == "/history":
                if not session:
                    print("(no session yet)", file=sys.stderr)
                    continue
                for turn in client.get_session(session).turns:
                    print(f"{turn.role}> {turn.text}")
                continue
            session = _say(client, text, session, args)


def health(args: argparse.Namespace) -> int:
    """Print SERVING / NOT_SERVING (with ``--parts``, each part too); exit 0 only when serving."""
    with client_from_args(args) as client:
        status = client.health()
        parts = client.health_parts() if args.parts else {}
    print(status)
    for part, part_status in parts.items():
        print(f"{part}\t{part_status}")
    return 0 if status == "SERVING" else 1


def sessions(args: argparse.Namespace) -> int:
    """List the caller's sessions."""
    with client_from_args(args) as client:
        for s in client.list_sessions():
            print(f"{s.session_id}\t{s.turn_count} turns")
    return 0
