import pytest

from dmha.errors import InvalidArgument
from dmha.llm.base import ChatMessage
from dmha.llm.prompt import ContextBlock, PromptBuilder


def render(messages):
    """A stand-in template: one token per word plus 2 per message."""
    return [0] * sum(len(m.text.split()) + 2 for m in messages)


def history(n):
    return [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} " + "w " * 8) for i in range(n)]


def test_everything_fits():
    b = PromptBuilder(render, "sys", 1000)
    out = b.build(history(4), "hello there", 100, [ContextBlock("Facts", ("a", "b"))])
    assert out.turns_used == 4 and out.blocks_used == 1
    assert out.messages[0].role == "system" and "Facts:\n- a\n- b" in out.messages[0].text
    assert out.messages[-1] == ChatMessage("user", "hello there")
    assert out.prompt_tokens == len(render(out.messages))


def test_oldest_turns_dropped_first_and_budget_respected():
    b = PromptBuilder(render, "sys", 60)
    out = b.build(history(10), "hello", 20, [])
    assert 0 < out.turns_used < 10
    kept = out.messages[1:-1]
    assert list(kept) == history(10)[-out.turns_used :]  # a contiguous, newest run
    assert out.prompt_tokens <= 60 - 20


def test_blocks_dropped_before_the_message_fails():
    b = PromptBuilder(render, "sys", 30)
    big = ContextBlock("Memories", tuple("x " * 10 for _ in range(3)))
    out = b.build([], "hi", 20, [big])
    assert out.blocks_used == 0


def test_message_that_cannot_fit_is_invalid_argument():
    b = PromptBuilder(render, "sys", 30)
    with pytest.raises(InvalidArgument) as err:
        b.build([], "word " * 50, 10, [])
    assert err.value.field == "message" and "at most 20" in str(err.value)
