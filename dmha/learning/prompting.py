"""Token sequences for training and evaluation, rendered exactly as serving renders them.

A fact is only learned for the prompts the model will actually see, so feedback is
trained under the deployment's chat template and system prompt; the answer is
tokenised on its own and appended (generation sees prompt ids followed by generated
ids, never a re-tokenisation of the joined text) and ends with the end-of-turn
token, so the model also learns to stop after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dmha.llm.engine import render_chat

__all__ = ["ChatFormat", "Sequence"]


@dataclass(frozen=True)
class Sequence:
    """A prompt and the answer tokens that follow it.

    Attributes:
        prompt: token ids up to and including the assistant header.
        answer: token ids of the reply (possibly empty).
    """

    prompt: tuple[int, ...]
    answer: tuple[int, ...] = ()

    @property
    def ids(self) -> list[int]:
        """Prompt then answer."""
        return [*self.prompt, *self.answer]


class ChatFormat:
    """Renders (system, user) prompts exactly as serving does (:func:`~dmha.llm.engine.render_chat`).

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        system_prompt: the serving system message (``ModelConfig.system_prompt``).
    """

    def __init__(self, tokenizer: Any, system_prompt: str) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        eos = tokenizer.eos_token_id
        self.eos_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, list) else (int(eos),)
        self._cache: dict[tuple[str, str], tuple[int, ...]] = {}

    def prompt(self, user: str, system: str | None = None) -> tuple[int, ...]:
        """Token ids of a chat prompt ending with the assistant header.

        Args:
            user: the user message.
            system: the system message; None = the serving system prompt.

        Returns:
            The ids.
        """
        system = self.system_prompt if system is None else system
        key = (system, user)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = tuple(render_chat(self.tokenizer, [("system", system), ("user", user)]))
        if len(self._cache) >= 4096:
            self._cache.clear()  # a long-lived worker sees unboundedly many questions
        self._cache[key] = result
        return result

    def shared_prefix(self) -> tuple[int, ...]:
        """The token ids every served prompt starts with (system message, user header)."""
        a, b = self.prompt("a"), self.prompt("b")
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return a[:n]

    def answer(self, text: str, end: bool = True) -> tuple[int, ...]:
        """Token ids of a reply, optionally followed by the end-of-turn token.

        Args:
            text: the reply.
            end: append the end-of-turn token.

        Returns:
            The ids.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return tuple(int(i) for i in ids) + (self.eos_ids[:1] if end else ())

    def sequence(self, user: str, answer: str = "", system: str | None = None) -> Sequence:
        """A prompt with an answer (no answer: a bare prompt).

        Args:
            user: the user message.
            answer: the reply; empty gives a sequence without answer tokens.
            system: the system message; None = the serving system prompt.

        Returns:
            The sequence.
        """
        return Sequence(self.prompt(user, system), self.answer(answer) if answer else ())

    def premise_system(self, premises: list[tuple[str, str]]) -> str:
        """The system message of the intervention ``do(T)``: the facts stated as given.

        Args:
            premises: ``(input, target)`` pairs to state.

        Returns:
            The serving system prompt followed by the facts.
        """
        lines = "\n".join(f"- Q: {q.strip()} A: {a.strip()}" for q, a in premises)
        return f"{self.system_prompt}\nThe following facts are true; use them when you answer:\n{lines}"

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, special tokens dropped."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
