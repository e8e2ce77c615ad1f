"""Building the prompt of one turn within the model's context budget.

Order of sacrifice when the budget is tight: the oldest working-memory turns go
first, then retrieved context blocks from the last one up; the new message is
never cut (a message that cannot fit even alone is an INVALID_ARGUMENT). Whole
turns are dropped, so nothing is ever truncated mid-token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dmha.errors import InvalidArgument
from dmha.llm.base import ChatMessage

__all__ = ["BuiltPrompt", "ContextBlock", "PromptBuilder"]

Render = Callable[[Sequence[ChatMessage]], list[int]]


@dataclass(frozen=True)
class ContextBlock:
    """A titled block of context for the system message (facts, memories)."""

    title: str
    lines: tuple[str, ...]

    def render(self) -> str:
        """The block as text."""
        return self.title + ":\n" + "\n".join(f"- {line}" for line in self.lines)


@dataclass(frozen=True)
class BuiltPrompt:
    """The messages sent to the model and what made it in."""

    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    turns_used: int
    blocks_used: int


class PromptBuilder:
    """Packs system prompt, context, history and the new message into a budget.

    Args:
        render: chat-template + tokenise function of the live model.
        system_prompt: the base system message.
        max_positions: the model's context size in tokens.
    """

    def __init__(self, render: Render, system_prompt: str, max_positions: int) -> None:
        self._render = render
        self._system = system_prompt
        self._max_positions = max_positions

    def _system_message(self, blocks: Sequence[ContextBlock]) -> ChatMessage:
        parts = [self._system, *(b.render() for b in blocks if b.lines)]
        return ChatMessage("system", "\n\n".join(parts))

    def build(
        self,
        history: Sequence[ChatMessage],
        message: str,
        max_new_tokens: int,
        blocks: Sequence[ContextBlock] = (),
    ) -> BuiltPrompt:
        """Fit as much as possible into ``max_positions - max_new_tokens`` tokens.

        Args:
            history: earlier turns, oldest first.
            message: the new user message.
            max_new_tokens: room kept for the reply.
            blocks: context for the system message, most important first.

        Returns:
            The packed prompt.

        Raises:
            InvalidArgument: the message does not fit even without history or context.
        """
        budget = self._max_positions - max_new_tokens
        user = ChatMessage("user", message)
        kept_blocks = list(blocks)
        while True:
            system = self._system_message(kept_blocks)
            base = len(self._render([system, user]))
            if base <= budget or not kept_blocks:
                break
            kept_blocks.pop()
        if base > budget:
            raise InvalidArgument(
                "message",
                f"needs {base} prompt tokens; at most {budget} fit with "
                f"max_new_tokens={max_new_tokens} in a {self._max_positions}-token context",
            )
        # Add history newest first; the first turn that does not fit ends it, so the
        # kept history is always a contiguous, most recent run of turns.
        kept: list[ChatMessage] = []
        tokens = base
        for turn in reversed(history):
            candidate = [system, turn, *kept, user]
            n = len(self._render(candidate))
            if n > budget:
                break
            kept.insert(0, turn)
            tokens = n
        return BuiltPrompt(
            messages=(system, *kept, user),
            prompt_tokens=tokens,
            turns_used=len(kept),
            blocks_used=len(kept_blocks),
        )
