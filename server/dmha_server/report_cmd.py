"""``dmha report``: figures of what the system did, offline or from a running server.

Offline (the default, ``--config``/``--data-dir``) it opens the data folder's stores
itself; with the embedded Redis and Milvus Lite the server must be stopped first.
Online (``--address``) it reads everything through the SDK with an admin's token
(``--user U`` mints one for U with the admin API key), and uses the local
registry and model folder (the same machine, or a shared registry path) for the
attention figure and the utility map. This module only translates API records
into the report's inputs; drawing lives in :mod:`dmha.report` (through
:mod:`dmha.runtime`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmha_client.errors import PermissionDenied

if TYPE_CHECKING:  # the runtime loads the model stack: imported only when the command runs
    from dmha.runtime import DMHAConfig
    from dmha_client import DMHAClient

__all__ = ["add_parser", "parse_since", "report"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PAGE = 1000


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: Unix seconds, an ISO date/time (UTC unless it says), or an age (``36h``, ``7d``).

    Raises:
        ValueError: none of those.
    """
    text = text.strip()
    if not text:
        return 0.0
    if m := _RELATIVE.match(text):
        return (now if now is not None else time.time()) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: expected Unix seconds, an ISO date/time or an age like 7d") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- online


def _online_client(args: argparse.Namespace, cfg: DMHAConfig) -> tuple[DMHAClient, str]:
    """A client acting for the reported user, and that user's id."""
    import os

    from dmha.runtime import load_secrets
    from dmha_client import DMHAClient

    token = args.token or os.environ.get("DMHA_TOKEN", "")
    client = DMHAClient(args.address, token, timeout=300)
    if args.user:
        api_key = args.api_key or os.environ.get("DMHA_API_KEY") or load_secrets(cfg.auth, cfg.data_dir)[1]
        # An admin reads another user's data as that user: every RPC is scoped to the caller.
        client.token = client.issue_token(api_key, args.user, ("user", "admin"), ttl_seconds=3600)
        return client, args.user
    if not client.token:
        raise SystemExit("dmha report --address needs --token (or $DMHA_TOKEN), or --user with the admin API key")
    return client, _subject(client.token)


def _subject(jwt: str) -> str:
    import base64

    try:
        payload = jwt.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(data["sub"])
    except (IndexError, ValueError, KeyError) as exc:
        raise SystemExit("the token is not a JWT with a subject") from exc


def read_online(client: DMHAClient, user_id: str, cfg: DMHAConfig) -> Any:
    """Everything the API offers about the caller, as report inputs (memories embedded locally)."""
    from dmha.runtime import report as rp

    inputs = rp.ReportInputs(user_id, source=f"server {client.address} (through the SDK)")
    inputs.threshold = cfg.metacognition.threshold
    memories = []
    token = ""
    while True:
        page = client.memory_list(page_size=_PAGE, page_token=token)
        memories += [rp.MemoryPoint(m.id, m.kind, m.text, m.created_at, int(m.cluster_id)) for m in page.memories]
        token = page.next_page_token
        if not token:
            break
    inputs.memories = rp.embed_points(cfg, memories) if memories else []
    cores = {c.statement.id: tuple(x.text for x in c.conflicts_with) for c in client.kb_conflicts()}
    inputs.statements = [
        rp.StatementRow(s.id, s.text, s.status or "accepted", s.reason, cores.get(s.id, ()), s.created_at)
        for s in client.kb_list()
    ]
    inputs.versions = [
        rp.VersionRecord(
            v.id,
            v.parent or None,
            v.created_at,
            v.status,
            v.live,
            dict(v.metrics),
            json.loads(v.plan_json) if v.plan_json else {},
            tuple(v.feedback_ids),
        )
        for v in client.list_versions()
    ]
    inputs.notes["dynamics"] = (
        "through the API only deployed versions are listed; rejected updates appear in an offline report."
    )
    try:
        inputs.attempts = rp.attempts_from(client.get_insights().get("records", []))
    except PermissionDenied:
        inputs.notes["dynamics"] += " The meta-learner's records need a trainer or admin token."
    events = client.monitor_events(limit=1000, include_passing=True)
    inputs.scores = [
        rp.ScoreRecord(
            e.turn_id,
            e.session_id,
            e.created_at,
            e.event.score,
            dict(e.event.signals),
            e.event.outcome != "passed",
            e.event.outcome,
            tuple(e.event.actions),
        )
        for e in events
    ]
    for summary in client.list_sessions():
        for t in client.get_session(summary.session_id).turns:
            inputs.turns.append(rp.TurnRecord(t.turn_id, summary.session_id, t.role, t.text, t.created_at))
    return inputs


# ------------------------------------------------------------------------ command


def report(args: argparse.Namespace) -> int:
    """Write the report folder; print its ``summary.md`` path."""
    from dmha.runtime import ensure_model, registry_for, set_torch_threads
    from dmha.runtime import report as rp
    from dmha_server.cli import load_from_args
    from dmha_server.reproduce import reproduce

    cfg = load_from_args(args)
    set_torch_threads(cfg.model.threads)
    try:
        since = parse_since(args.since or "")
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    out = Path(args.out)
    model_dir = ensure_model(cfg.model.path, cfg.data_dir, _say)
    registry = registry_for(cfg.data_dir, model_dir)

    def common() -> dict[str, Any]:
        # The reproduction runs once the records are read (a refused folder costs nothing).
        runs, meta = reproduce(cfg, model_dir, args.reproduce, args.facts, _say) if args.reproduce else ([], {})
        return {
            "seed": args.seed,
            "since": since,
            "turn_id": args.turn or "",
            "attention": not args.no_attention,
            "runs": runs,
            "repro_meta": meta,
            "say": _say,
        }

    if args.address:
        client, user = _online_client(args, cfg)
        with client:
            _say(f"reading {user}'s records from {client.address}")
            inputs = read_online(client, user, cfg)

            def online_memories(pair: Any, count: Any) -> list[str]:
                user_turn, reply, _ = pair
                text = rp.chat_text(user_turn.text)
                k = cfg.memory.retrieval.top_k
                if not text or k <= 0:
                    return []
                found = client.memory_search(text, min(cfg.memory.retrieval.max_k, 4 * k + 8))
                # The prompt draws only some kinds (retrieval.prompt_kinds); search finds all.
                kinds = set(cfg.memory.retrieval.prompt_kinds)
                hits = [
                    (s.memory.text, s.memory.created_at, tuple(s.memory.source_ids))
                    for s in found
                    if s.memory.kind in kinds
                ]
                ids = {user_turn.turn_id, reply.turn_id}
                return rp.memories_before(hits, user_turn.created_at, ids, k, cfg.memory.retrieval.token_budget, count)

            sections = rp.make_report(
                cfg,
                registry,
                inputs,
                out,
                facts_for=lambda text: rp.facts_from_statements(inputs.statements, user, text),
                memories_for=online_memories,
                **common(),
            )
    else:
        if not args.user:
            raise SystemExit("dmha report (offline) needs --user U")
        _say(f"opening the stores of {cfg.data_dir} (the server must not be running on them)")
        with rp.OfflineStores(cfg, model_dir) as stores:
            inputs = rp.read_offline(stores, args.user)
            sections = rp.make_report(
                cfg,
                registry,
                inputs,
                out,
                facts_for=lambda text: stores.facts_for(args.user, text),
                memories_for=lambda pair, count: stores.memories_for(args.user, pair, count),
                **common(),
            )
    for s in sections:
        _say(f"  {s.title}: {'no figure: ' + s.empty_reason if s.empty_reason else ', '.join(s.images)}")
    print(out / "summary.md")
    return 0


def add_parser(sub: Any, server_flags: Any, guard: Any) -> None:
    """Register ``dmha report`` (called by :func:`dmha_server.cli.register`)."""
    p = sub.add_parser(
        "report",
        help="write figures of what the system did (PNG + CSV/JSON, summary.md, report.html); admin",
        description="Draw what DMHA did for a user: attention over context blocks, the memory latent map, "
        "the knowledge lattice, the utility map, learning dynamics, the consistency monitor, and "
        "optionally a reproducibility run. Offline from a data folder (stop the server first when it "
        "uses the embedded Redis/Milvus), or online from a running server with --address.",
    )
    server_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (created)")
    p.add_argument("--user", help="whose records (offline: required; online: mints a token with the admin API key)")
    p.add_argument("--since", metavar="T", help="only records from T: Unix seconds, ISO date/time (UTC) or an age (7d)")
    p.add_argument("--turn", metavar="TURN_ID", help="the turn of the attention figure (default: the newest reply)")
    p.add_argument("--seed", type=int, default=0, help="seeds projections and layouts (default 0)")
    p.add_argument("--no-attention", action="store_true", help="skip the attention figure (no model run)")
    p.add_argument(
        "--reproduce",
        type=int,
        nargs="?",
        const=5,
        default=0,
        metavar="N",
        help="also teach the edit benchmark's first --facts facts under N learning seeds (default 5; "
        "a fresh server each; about 4-9 minutes per fact on 2 CPU cores)",
    )
    p.add_argument("--facts", type=int, default=1, metavar="K", help="facts per reproduction run (default 1)")
    p.add_argument("--address", metavar="HOST:PORT", help="read from this running server instead of --data-dir")
    p.add_argument("--token", metavar="JWT", help="admin bearer token (env DMHA_TOKEN)")
    p.add_argument("--api-key", help="admin API key for --user (env DMHA_API_KEY; default: the local secrets)")
    p.set_defaults(func=guard(report))
