"""MemoryHook: retrieval into the prompt, degraded answers when Milvus is down, archival after commit."""

from __future__ import annotations

import asyncio

from memory_fakes import HashEmbedder, ListWorkingMemory, MemoryStore

from dmha.auth.tokens import Principal
from dmha.config import LongTermConfig, MemoryConfig, RetrievalConfig, WorkingMemoryConfig
from dmha.llm.base import GenerationOptions, GenerationResult
from dmha.memory.hook import MEMORIES_TITLE, MemoryHook, memory_line
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.summariser import ExtractiveSummariser
from dmha.turn import Turn, TurnState


class WordCounter:
    """The part of the LLM the hook uses: token counting for the budget."""

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def build(top_k: int = 3, budget: int = 200, kinds=None, roles=None):
    cfg = MemoryConfig(
        working=WorkingMemoryConfig(max_turns=2),
        longterm=LongTermConfig(archive_batch=2),
        retrieval=RetrievalConfig(max_k=20),
    )
    emb = HashEmbedder()
    store = MemoryStore(emb.dim)
    wm = ListWorkingMemory(2)
    memory = LongTermMemory(cfg, store, emb, working=wm, summariser=ExtractiveSummariser())
    return MemoryHook(memory, WordCounter(), top_k, budget, kinds, roles), memory, store, wm


def turn(message: str, user: str = "alice", session: str = "s1") -> TurnState:
    return TurnState(Principal(user, frozenset({"user"})), session, message, message, GenerationOptions())


async def test_relevant_memories_of_the_caller_go_into_the_prompt():
    hook, memory, _, _ = build()
    memory.add_texts("alice", ["My sister Margaret lives in Lisbon.", "I play the cello on Sundays."])
    memory.add_texts("bob", ["My sister Margaret lives in Oslo."])
    t = turn("Where does my sister Margaret live?")
    await hook.prepare(t)
    assert t.memories and all(m.why for m in t.memories)
    assert "Lisbon" in t.memories[0].text and not any("Oslo" in m.text for m in t.memories)
    (block,) = t.blocks
    assert block.title == MEMORIES_TITLE and block.lines[0].endswith(": " + t.memories[0].text)


async def test_statements_only_and_disabled_retrieval_search_nothing():
    hook, memory, store, _ = build()
    memory.add_texts("alice", ["My sister Margaret lives in Lisbon."])
    store.fail = True  # any search would raise
    empty = turn("fact: a.b = 1")
    empty.chat_text = ""  # the KB hook took every line
    await hook.prepare(empty)
    off, _, _, _ = build(top_k=0)
    t = turn("Where does Margaret live?")
    await off.prepare(t)
    assert empty.warnings == [] and t.warnings == [] and t.blocks == [] and empty.blocks == []


async def test_milvus_down_answers_from_working_memory_with_a_warning():
    hook, memory, store, _ = build()
    store.fail = True
    t = turn("Where does my sister live?")
    await hook.prepare(t)
    assert t.memories == [] and t.blocks == []
    assert t.warnings == ["long-term memory is unavailable; answered from recent turns only"]


async def test_review_keeps_the_reply():
    hook, _, _, _ = build()
    reply = GenerationResult("ok", 1, 1, "stop", "v0")
    assert await hook.review(turn("hi"), reply, None) is reply


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_committed_archives_the_overflow_in_the_background():
    hook, _, store, wm = build()
    texts = ["I moved to Lisbon in May.", "Nice!", "My cat is called Tofu.", "Cute."]
    turns = [
        Turn(f"t{i}", "alice", "s1", "user" if i % 2 == 0 else "assistant", x, 1.7e9 + i) for i, x in enumerate(texts)
    ]
    wm.append(turns)
    hook.committed(turn("x"), turns[-2:])
    await wait_until(lambda: len(wm.all_turns("alice", "s1")) == 2)
    assert {t.turn_id for t in wm.all_turns("alice", "s1")} == {"t2", "t3"}
    assert any(r.user_id == "alice" and "Lisbon" in r.text for r in store.rows.values())


async def test_archival_postponed_while_milvus_is_down_keeps_every_turn():
    hook, _, store, wm = build()
    turns = [Turn(f"t{i}", "alice", "s1", "user", f"turn number {i} about Lisbon", 1.7e9 + i) for i in range(4)]
    wm.append(turns)
    store.fail = True
    hook.committed(turn("x"), turns[-2:])
    await asyncio.sleep(0.2)
    assert len(wm.all_turns("alice", "s1")) == 4


async def test_the_prompt_leaves_out_the_assistants_replies_and_what_the_window_shows():
    hook, memory, _, wm = build(top_k=10, kinds=("turn", "fact"), roles=("user",))  # as the server builds it
    said = [
        ("user", "I play the cello on Sundays."),
        ("assistant", "The cello on Sundays sounds lovely."),
        ("user", "My cello teacher lives in Porto."),
        ("assistant", "Porto is a fine city for a cello teacher."),
        ("user", "I practise the cello scales every evening."),
        ("assistant", "Cello scales every evening build skill."),
    ]
    wm.append([Turn(f"t{i}", "alice", "s1", role, text, float(i)) for i, (role, text) in enumerate(said)])
    memory.archive_overflow("alice", "s1")  # the first four turns leave the 2-turn window
    t = turn("Tell me about my cello")
    t.history = tuple(wm.recent("alice", "s1"))
    t.history += (Turn("t9", "alice", "s1", "user", "my CELLO teacher lives in porto.", 9.0),)
    await hook.prepare(t)
    texts = [m.text for m in t.memories]
    assert texts == ["I play the cello on Sundays."]  # no reply, nothing the window shows
    (block,) = t.blocks
    assert block.lines == (memory_line("I play the cello on Sundays.", 0.0),)
