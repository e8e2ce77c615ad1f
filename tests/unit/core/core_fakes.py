"""Stand-ins for the pipeline's parts (unit tier: no model, no Redis)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from dmha.llm.base import ChatMessage, GenerationOptions, GenerationResult, ModelHandle, TokenDelta
from dmha.memory.working import SessionInfo
from dmha.turn import Turn, TurnState


class ScriptedLLM:
    """Streams a fixed reply word by word; ``complete`` (the regenerate path) returns ``corrected``.

    Every call is logged in ``calls`` as ``(kind, messages)`` so tests can check what the
    model saw and when it ran relative to the hooks (``log`` is shared with them).
    """

    def __init__(self, reply: str = "Paris is the capital.", corrected: str = "Corrected.", log=None) -> None:
        self.reply = reply
        self.corrected = corrected
        self.log: list[str] = log if log is not None else []
        self.calls: list[tuple[str, list[ChatMessage]]] = []

    @property
    def handle(self) -> ModelHandle:
        return ModelHandle("v-test", None, None, 4096, frozenset())

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        return [0] * sum(len(m.text.split()) + 4 for m in messages)

    def _result(self, text: str) -> GenerationResult:
        return GenerationResult(
            text=text,
            prompt_tokens=7,
            completion_tokens=len(text.split()),
            finish_reason="stop",
            model_version="v-test",
            mean_logprob=-0.1,
        )

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[TokenDelta | GenerationResult, None]:
        self.log.append("generate")
        self.calls.append(("stream", list(messages)))
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            yield TokenDelta(word if i == 0 else " " + word)
        yield self._result(self.reply)

    async def complete(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> GenerationResult:
        self.log.append("regenerate")
        self.calls.append(("complete", list(messages)))
        return self._result(self.corrected)


class DictWorkingMemory:
    """WorkingMemory in a dict (no cap, no overflow)."""

    def __init__(self, log=None) -> None:
        self.turns: dict[tuple[str, str], list[Turn]] = {}
        self.log: list[str] = log if log is not None else []

    def append(self, turns: Sequence[Turn]) -> None:
        self.log.append("store")
        for t in turns:
            self.turns.setdefault((t.user_id, t.session_id), []).append(t)

    def recent(self, user_id: str, session_id: str, limit: int | None = None) -> list[Turn]:
        return list(self.turns.get((user_id, session_id), []))[-(limit or 100) :]

    def overflow(self, user_id: str, session_id: str) -> list[Turn]:
        return []

    def trim(self, user_id: str, session_id: str, turn_ids: Sequence[str]) -> int:
        return 0

    def all_turns(self, user_id: str, session_id: str) -> list[Turn]:
        return list(self.turns.get((user_id, session_id), []))

    def sessions(self, user_id: str) -> list[SessionInfo]:
        found = [(s, ts) for (u, s), ts in self.turns.items() if u == user_id and ts]
        found.sort(key=lambda e: e[1][-1].created_at, reverse=True)
        return [SessionInfo(s, len(ts), ts[-1].created_at) for s, ts in found]

    def delete_session(self, user_id: str, session_id: str) -> bool:
        return self.turns.pop((user_id, session_id), None) is not None


class RecordingHook:
    """A TurnHook that logs each phase as ``"<name>.<phase>"`` and can act on the turn."""

    def __init__(self, name: str, log: list[str], *, review_suffix: str = "", regenerate_with: str = "") -> None:
        self.name = name
        self.log = log
        self.review_suffix = review_suffix
        self.regenerate_with = regenerate_with
        self.seen_replies: list[str] = []
        self.stored: list[Turn] = []

    async def prepare(self, turn: TurnState) -> None:
        self.log.append(f"{self.name}.prepare")

    async def review(self, turn: TurnState, reply: GenerationResult, regenerate) -> GenerationResult:
        self.log.append(f"{self.name}.review")
        self.seen_replies.append(reply.text)
        if self.regenerate_with:
            from dmha.llm.prompt import ContextBlock

            return await regenerate([ContextBlock("Constraints", (self.regenerate_with,))])
        if self.review_suffix:
            return GenerationResult(
                text=reply.text + self.review_suffix,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                finish_reason=reply.finish_reason,
                model_version=reply.model_version,
            )
        return reply

    def committed(self, turn: TurnState, stored: Sequence[Turn]) -> None:
        self.log.append(f"{self.name}.committed")
        self.stored = list(stored)
