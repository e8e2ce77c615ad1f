"""A scripted chat on the real default model: every reply is its own, none a copy of an earlier one.

The server's per-turn pipeline with the real model, embedded Redis, Milvus Lite,
the knowledge base and the monitor; a 6-turn working memory and 4-turn archive
batches, so from the fourth message on the prompt also carries retrieved memories.
Before the fix (raw ``fact:`` lines under a "knowledge base" title, the assistant's
own replies among the retrieved memories, no copy guard) the seventh reply repeated
the sixth verbatim, the assistant's earlier replies came back as memories, and the
replies quoted the message in a quiz template (bench/chat_repeats.py, BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio

import pytest

from dmha.auth.tokens import Principal
from dmha.config import load_config
from dmha.context import drain, resolve_options
from dmha.executor import settle_background
from dmha.runtime import build_runtime

pytestmark = pytest.mark.slow

STATEMENTS = "fact: pepper.species = beagle\nfact: alice.pet = pepper\nfact: bob.city = paris"
MESSAGES = [
    "My beagle Pepper loves chasing the ball in the park.",
    "Pepper barked at the mailman again this morning.",
    "I walked Pepper along the river before work.",
    "Pepper chewed my slippers while I was out.",
    "The vet says Pepper the beagle needs more exercise.",
    "I baked a sourdough loaf with a crunchy crust today.",
    "My sourdough starter needs flour and water every day.",
    "I tried a rye sourdough recipe with sea salt.",
    "The second sourdough loaf came out much lighter.",
    "I gave a sourdough loaf to my neighbour.",
]


def words(text: str) -> list[str]:
    return text.lower().split()


def runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


async def test_ten_turn_chat_has_no_copied_reply(tmp_path, model_dir):
    cfg = load_config(
        None,
        data_dir=str(tmp_path),
        model={"path": str(model_dir), "threads": 1},
        server={"metrics_port": None},
        memory={"longterm": {"enabled": True, "archive_batch": 4}, "working": {"max_turns": 6}},
        learning={"enabled": False},
    )
    runtime = build_runtime(cfg, loop=asyncio.get_running_loop())
    try:
        runtime.bank.for_user("alice").tell(STATEMENTS)
        alice = Principal("alice", frozenset({"user"}))
        options = resolve_options(cfg.limits, max_new_tokens=48)
        sid, replies, remembered = "", [], 0
        for message in MESSAGES:
            result = await drain(runtime.pipeline.run(alice, sid, message, options))
            sid = result.session_id
            replies.append(result.text)
            remembered += len(result.memories)
            # Prompts never carry the assistant's own earlier replies as memories.
            assert all(m.text not in replies for m in result.memories), result.memories
            await settle_background()  # archival of the overflow, so every run sees the same memories
    finally:
        runtime.close()
    assert remembered > 0  # long-term memory took part
    for i, reply in enumerate(replies):
        earlier = replies[:i]
        assert words(reply), f"reply {i + 1} is empty"
        assert words(reply) not in [words(e) for e in earlier], f"reply {i + 1} repeats an earlier one: {reply!r}"
        shared = runs(reply) & set().union(*(runs(e) for e in earlier))
        assert not shared, f"reply {i + 1} copies 8 words of an earlier one: {reply!r}"
    # Not every reply is the message quoted back (the template before the fix).
    echoes = [r for m, r in zip(MESSAGES, replies, strict=True) if " ".join(words(m)) in " ".join(words(r))]
    assert len(echoes) <= len(MESSAGES) // 2, echoes
