"""Types and Protocols shared by everything that generates text.

The serving loop (``dmha.llm.engine``) drives a :class:`StepModel`: one prefill
over the prompt, then one decode step per token with an explicit key/value cache.
The eager Hugging Face model and the TorchScript-frozen module of a learned
version both implement it, so a hot swap only replaces the :class:`ModelHandle`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BatchStepModel",
    "ChatMessage",
    "FinishReason",
    "GenerationOptions",
    "GenerationResult",
    "LLM",
    "ModelHandle",
    "Past",
    "StepModel",
    "TokenDelta",
]

# The key/value cache between steps. Opaque to the serving loop: the eager model
# keeps a transformers Cache object, the frozen module a flat tuple of tensors
# (per layer key, value; [batch, kv_heads, seq, head_dim]) that TorchScript can
# take in and give back.
Past = Any

FinishReason = Literal["stop", "length", "cancelled", "deadline"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: Literal["system", "user", "assistant"]
    text: str


@dataclass(frozen=True)
class GenerationOptions:
    """How to sample a reply. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    deadline: float | None = None
    """Absolute ``time.monotonic()`` after which generation stops with ``deadline``."""
    stop: tuple[str, ...] = ()
    """Stop sequences: the reply ends (``stop``) before the first one it would contain;
    the sequence itself is neither streamed nor stored."""
    avoid: tuple[str, ...] = ()
    """Earlier replies this one must not copy (see ``avoid_ngram``)."""
    avoid_ngram: int = 0
    """No run of this many tokens of an ``avoid`` text is generated again (0 = off):
    the token that would complete such a run is excluded at each step."""


@dataclass(frozen=True)
class TokenDelta:
    """A piece of streamed text. Deltas never split a UTF-8 character."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprob: float = 0.0
    """Sum of the log-probabilities of ``token_ids`` (for the confidence signal)."""


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    model_version: str
    mean_logprob: float = 0.0
    token_logprobs: tuple[float, ...] = field(default=(), repr=False)


@runtime_checkable
class StepModel(Protocol):
    """A causal LM driven one step at a time with an explicit cache."""

    def prefill(self, input_ids: Any) -> tuple[Any, Past]:
        """Run the prompt.

        Args:
            input_ids: ``LongTensor[1, T]``.

        Returns:
            ``(logits[1, vocab]`` of the last position, the cache).
        """
        ...

    def decode(self, token: Any, past: Past) -> tuple[Any, Past]:
        """Feed one token.

        Args:
            token: ``LongTensor[1, 1]``.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[1, vocab], the new cache)``.
        """
        ...


@runtime_checkable
class BatchStepModel(StepModel, Protocol):
    """A step model that also runs a batch of streams of different lengths.

    Prompts are left-padded; ``attention_mask`` (1 = real token, 0 = padding) covers
    the whole sequence so far and each row's positions are derived from it, so every
    row computes what it would alone. The cache is a flat tuple of tensors whose first
    dimension is the row: a caller drops finished rows with ``index_select(0, ...)``
    on each of them. ``prefill``/``decode`` also accept ``B`` rows of one length.
    """

    def prefill_padded(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Past]:
        """Run left-padded prompts.

        Args:
            input_ids: ``LongTensor[B, T]``.
            attention_mask: ``[B, T]``.

        Returns:
            ``(logits[B, vocab]`` of the last position, the cache).
        """
        ...

    def decode_padded(self, tokens: Any, attention_mask: Any, past: Past) -> tuple[Any, Past]:
        """Feed one token per row.

        Args:
            tokens: ``LongTensor[B, 1]``.
            attention_mask: ``[B, S + 1]``: the previous mask with a 1 appended.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[B, vocab], the new cache)``.
        """
        ...


@dataclass(frozen=True)
class ModelHandle:
    """One servable model version: what a stream holds on to for its whole life."""

    version: str
    tokenizer: Any
    step_model: StepModel
    max_positions: int
    eos_token_ids: frozenset[int]
    kind: Literal["eager", "frozen"] = "eager"
    torch_model: Any = field(default=None, repr=False)
    """The eager ``PreTrainedModel`` (training starts from it); may be None for frozen-only."""


class LLM(Protocol):
    """What the rest of DMHA needs from a language model."""

    @property
    def handle(self) -> ModelHandle:
        """The live model version."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the live tokenizer."""
        ...

    def render_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Apply the chat template (with the generation prompt) and tokenise."""
        ...

    def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[TokenDelta | GenerationResult, None]:
        """Yield deltas, then exactly one :class:`GenerationResult` last."""
        ...

    async def complete(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> GenerationResult:
        """Generate a whole reply."""
        ...

    def swap(self, handle: ModelHandle) -> None:
        """Make ``handle`` live; streams already running keep their own handle."""
        ...
