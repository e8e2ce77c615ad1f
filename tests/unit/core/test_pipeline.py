"""ChatPipeline: hook order, the review chain, regenerate, and the statements-only branch."""

from __future__ import annotations

import pytest
from core_fakes import DictWorkingMemory, RecordingHook, ScriptedLLM

from dmha.auth.tokens import Principal
from dmha.config import LimitsConfig, ModelConfig
from dmha.context import ChatPipeline, drain, resolve_options
from dmha.errors import InvalidArgument
from dmha.ids import is_valid_id
from dmha.turn import TurnResult, TurnState

ALICE = Principal("alice", frozenset({"user"}))


def pipeline(hooks, log=None, **llm):
    log = log if log is not None else []
    llm_ = ScriptedLLM(log=log, **llm)
    wm = DictWorkingMemory(log=log)
    return ChatPipeline(llm_, wm, ModelConfig(), LimitsConfig(), hooks), llm_, wm


def options():
    return resolve_options(LimitsConfig(), max_new_tokens=8)


async def test_hooks_run_in_order_around_generation_and_storage():
    log: list[str] = []
    hooks = [RecordingHook("kb", log), RecordingHook("memory", log), RecordingHook("monitor", log)]
    pipe, _, wm = pipeline(hooks, log)
    result = await drain(pipe.run(ALICE, "", "What is the capital of France?", options()))
    assert log == [
        "kb.prepare",
        "memory.prepare",
        "monitor.prepare",
        "generate",
        "kb.review",
        "memory.review",
        "monitor.review",
        "store",
        "kb.committed",
        "memory.committed",
        "monitor.committed",
    ]
    # committed() sees the stored pair, user turn first.
    stored = wm.all_turns("alice", result.session_id)
    assert [t.role for t in stored] == ["user", "assistant"]
    assert hooks[0].stored == stored


async def test_stream_yields_deltas_then_one_result():
    pipe, _, _ = pipeline([])
    items = [item async for item in pipe.run(ALICE, "s1", "Hi", options())]
    *deltas, last = items
    assert "".join(deltas) == "Paris is the capital." and all(isinstance(d, str) for d in deltas)
    assert isinstance(last, TurnResult) and last.session_id == "s1" and last.text == "Paris is the capital."


async def test_each_review_sees_the_previous_hooks_reply_and_the_last_one_is_stored():
    log: list[str] = []
    first, second = RecordingHook("a", log, review_suffix=" (checked)"), RecordingHook("b", log)
    pipe, _, wm = pipeline([first, second], log)
    result = await drain(pipe.run(ALICE, "s1", "Hi", options()))
    assert first.seen_replies == ["Paris is the capital."]
    assert second.seen_replies == ["Paris is the capital. (checked)"]
    assert result.text == "Paris is the capital. (checked)"
    assert wm.all_turns("alice", "s1")[1].text == "Paris is the capital. (checked)"


async def test_regenerate_reruns_the_model_with_the_extra_blocks_first():
    log: list[str] = []
    fixer = RecordingHook("monitor", log, regenerate_with="paris.capital_of = france")
    later = RecordingHook("after", log)
    pipe, llm, _ = pipeline([fixer, later], log)
    result = await drain(pipe.run(ALICE, "s1", "Hi", options()))
    assert log.index("generate") < log.index("regenerate") < log.index("after.review")
    kind, messages = llm.calls[-1]
    assert kind == "complete"
    assert "paris.capital_of = france" in messages[0].text  # the extra block reached the system message
    assert later.seen_replies == ["Corrected."] and result.text == "Corrected."


class StatementsOnly(RecordingHook):
    """Acts like the KB hook for a message of statements only."""

    def __init__(self, log: list[str], notice: str) -> None:
        super().__init__("kb", log)
        self.notice = notice

    async def prepare(self, turn: TurnState) -> None:
        await super().prepare(turn)
        turn.chat_text = ""
        turn.notice = self.notice


@pytest.mark.parametrize(
    ("notice", "reply"), [("1 statement(s) accepted.", "1 statement(s) accepted."), ("", "Noted.")]
)
async def test_statements_only_message_skips_the_model_and_review(notice, reply):
    log: list[str] = []
    pipe, llm, wm = pipeline([StatementsOnly(log, notice), RecordingHook("monitor", log)], log)
    items = [item async for item in pipe.run(ALICE, "s1", "fact: bob.age = 30", options())]
    assert items[0] == reply and isinstance(items[-1], TurnResult)
    result = items[-1]
    assert result.text == reply and result.completion_tokens == 0 and result.model_version == "v-test"
    assert not llm.calls and "kb.review" not in log and "monitor.review" not in log
    assert log[-2:] == ["kb.committed", "monitor.committed"]
    # The message is stored as sent (statement lines included), the notice as the reply.
    assert [t.text for t in wm.all_turns("alice", "s1")] == ["fact: bob.age = 30", reply]


async def test_new_session_gets_a_valid_id_and_bad_ids_fail_before_any_hook():
    log: list[str] = []
    pipe, _, _ = pipeline([RecordingHook("kb", log)], log)
    result = await drain(pipe.run(ALICE, "", "Hi", options()))
    assert is_valid_id(result.session_id)
    log.clear()
    with pytest.raises(InvalidArgument, match="session_id"):
        await drain(pipe.run(ALICE, "a:b", "Hi", options()))
    with pytest.raises(InvalidArgument, match="message"):
        await drain(pipe.run(ALICE, "s1", "   ", options()))
    assert log == []


async def test_hooks_see_the_window_and_the_reply_avoids_copying_earlier_replies():
    class Seeing(RecordingHook):
        async def prepare(self, turn: TurnState) -> None:
            self.history = turn.history
            self.options = turn.options

    hook = Seeing("memory", [])
    pipe, _, _ = pipeline([hook])
    first = await drain(pipe.run(ALICE, "", "Hi", options()))
    assert hook.history == () and hook.options.avoid == ()
    await drain(pipe.run(ALICE, first.session_id, "Hello again", options()))
    assert [t.role for t in hook.history] == ["user", "assistant"]
    assert hook.options.avoid == ("Paris is the capital.",)
    assert hook.options.avoid_ngram == ModelConfig().reply_copy_ngram > 0
    off = ChatPipeline(pipe._llm, pipe._working, ModelConfig(reply_copy_ngram=0), LimitsConfig(), [hook])
    await drain(off.run(ALICE, first.session_id, "And again", options()))
    assert hook.options.avoid == () and hook.options.avoid_ngram == 0
