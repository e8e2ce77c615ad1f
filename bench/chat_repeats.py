"""Does the served model answer each message, or copy an earlier reply?

Runs the report demo's conversation (bench/report_demo.py: 8 KB statements, then
17 messages on a dog, sourdough, a trip to Lisbon and two questions about Bob)
through the server's real per-turn pipeline in this process: the real default
model, embedded Redis, Milvus Lite, the knowledge base and the monitor, with a
6-turn working memory and 4-turn archive batches so the conversation reaches
long-term memory. Archival is awaited after every turn, so a run is reproducible.

Per reply it prints whether it repeats an earlier reply verbatim (after lower-casing
and collapsing white space), whether it echoes the message, and the retrieved
memories; the last line is JSON with the counts, including the looser count of
replies that share 8 consecutive words with an earlier reply.

    python bench/chat_repeats.py [--turns 17] [--max-new-tokens 48] [--show-prompts]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_demo import CONFLICT, MESSAGES, STATEMENTS


def normalise(text: str) -> str:
    """Lower case, white space collapsed (how a verbatim repeat is recognised)."""
    return " ".join(text.lower().split())


def repeats(replies: list[str]) -> list[int]:
    """1-based indexes of the replies equal to an earlier reply (normalised, non-empty)."""
    seen: set[str] = set()
    out = []
    for i, text in enumerate(replies, 1):
        key = normalise(text)
        if key and key in seen:
            out.append(i)
        seen.add(key)
    return out


def copies(replies: list[str], run: int = 8) -> list[int]:
    """1-based indexes of the replies sharing ``run`` consecutive words with an earlier reply.

    A looser test than :func:`repeats`: it also catches a copied template with a new
    ending ("You're planning a trip to Lisbon. It's a behavior that can be observed ...").
    """
    seen: set[tuple[str, ...]] = set()
    out = []
    for i, text in enumerate(replies, 1):
        words = normalise(text).split()
        grams = {tuple(words[j : j + run]) for j in range(len(words) - run + 1)}
        if grams & seen:
            out.append(i)
        seen |= grams
    return out


async def converse(
    data_dir: Path, messages: list[str], max_new_tokens: int, show_prompts: bool, settle: bool = True
) -> list[dict[str, object]]:
    """Run the conversation; one dict per turn."""
    from dmha.auth.tokens import Principal
    from dmha.config import default_data_dir, load_config
    from dmha.context import drain, resolve_options
    from dmha.executor import settle_background
    from dmha.llm.model_store import ensure_model
    from dmha.runtime import build_runtime

    model_dir = ensure_model(None, default_data_dir())
    cfg = load_config(
        None,
        data_dir=str(data_dir),
        model={"path": str(model_dir), "threads": 1},
        server={"metrics_port": None},
        memory={"longterm": {"enabled": True, "archive_batch": 4}, "working": {"max_turns": 6}},
        learning={"enabled": False},
    )
    runtime = build_runtime(cfg, loop=asyncio.get_running_loop())
    prompts: list[object] = []
    if show_prompts:
        build = runtime.pipeline._build

        def spy(*args: object) -> object:
            built = build(*args)  # type: ignore[arg-type]
            prompts.append(built)
            return built

        runtime.pipeline._build = spy  # type: ignore[method-assign]
    try:
        alice = Principal("alice", frozenset({"user"}))
        kb = runtime.bank.for_user("alice")
        kb.tell(STATEMENTS)
        kb.tell(CONFLICT)
        options = resolve_options(cfg.limits, max_new_tokens=max_new_tokens)
        sid = ""
        out: list[dict[str, object]] = []
        for i, msg in enumerate(messages, 1):
            t0 = time.perf_counter()
            result = await drain(runtime.pipeline.run(alice, sid, msg, options))
            sid = result.session_id
            if settle:
                await settle_background()  # archival of the overflow: part of the turn here
            else:
                await asyncio.sleep(0)
            row: dict[str, object] = {
                "turn": i,
                "message": msg,
                "reply": result.text,
                "seconds": round(time.perf_counter() - t0, 1),
                "memories": [(m.kind, m.text) for m in result.memories],
            }
            out.append(row)
            print(f"  turn {i:2d} ({row['seconds']} s): {result.text[:90]!r}", file=sys.stderr, flush=True)
            if show_prompts and prompts:
                last = prompts[-1]
                for m in last.messages:  # type: ignore[attr-defined]
                    print(f"      [{m.role}] {m.text!r}", file=sys.stderr)
        return out
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=len(MESSAGES), help="messages sent (default: all 17)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="reply length cap (the demo's 48)")
    parser.add_argument("--show-prompts", action="store_true", help="print every prompt sent to the model")
    parser.add_argument(
        "--no-settle", action="store_true", help="do not wait for archival between turns (as a live client does)"
    )
    parser.add_argument("--data-dir", help="server state (default: a temporary folder)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="dmha-chat-repeats-"))
    messages = MESSAGES[: args.turns]
    rows = asyncio.run(converse(data_dir, messages, args.max_new_tokens, args.show_prompts, not args.no_settle))
    replies = [str(r["reply"]) for r in rows]
    rep = repeats(replies)
    cop = copies(replies)
    echoes = [r["turn"] for r in rows if normalise(str(r["message"])) in normalise(str(r["reply"]))]
    for r in rows:
        flag = "REPEAT" if r["turn"] in rep else ("echo" if r["turn"] in echoes else "")
        print(f"{r['turn']:2d} {flag:6s} {r['message'][:40]!r:44s} -> {str(r['reply'])[:80]!r}")  # type: ignore[index]
    print(
        json.dumps(
            {
                "replies": len(rows),
                "repeats": len(rep),
                "repeat_turns": rep,
                "copies_8_words": len(cop),
                "copy_turns": cop,
                "echoes": len(echoes),
                "echo_turns": echoes,
                "distinct": len({normalise(x) for x in replies}),
            }
        )
    )


if __name__ == "__main__":
    main()
