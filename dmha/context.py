"""The per-turn pipeline: validate, gather context, generate, review, store.

The pipeline composes the LLM, working memory and a list of :class:`TurnHook`
objects. Long-term memory, the knowledge base and the consistency monitor are
hooks: each adds context before generation, may review the reply afterwards,
and may schedule background work once the turn is stored. The pipeline knows
nothing about any of them beyond that Protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from dmha.auth.tokens import Principal
from dmha.config import LimitsConfig, ModelConfig
from dmha.errors import InvalidArgument
from dmha.executor import run_blocking
from dmha.ids import check_id, new_session_id
from dmha.llm.base import (
    LLM,
    ChatMessage,
    GenerationOptions,
    GenerationResult,
    TokenDelta,
)
from dmha.llm.prompt import BuiltPrompt, ContextBlock, PromptBuilder
from dmha.memory.working import WorkingMemory
from dmha.turn import Turn, TurnResult, TurnState, new_turn_id

__all__ = [
    "MAX_SEED",
    "MAX_STOP_CHARS",
    "MAX_STOP_SEQUENCES",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "ChatPipeline",
    "Regenerate",
    "TurnHook",
    "drain",
    "resolve_options",
]

MIN_TEMPERATURE = 0.01
"""Smallest non-zero temperature: logits / t must stay finite in float32."""
MAX_TEMPERATURE = 2.0
"""Largest temperature (beyond it replies are noise)."""
MAX_SEED = 2**63 - 1
"""torch.Generator.manual_seed takes a signed 64-bit seed."""
MAX_STOP_SEQUENCES = 4
"""Stop sequences per request (the OpenAI API's limit, which the gateway mirrors)."""
MAX_STOP_CHARS = 100
"""Longest stop sequence: each decoded token is searched for every sequence."""

log = logging.getLogger(__name__)

Regenerate = Callable[[Sequence[ContextBlock]], Awaitable[GenerationResult]]
"""Generate the reply again with extra context blocks (the self-correction loop)."""


class TurnHook(Protocol):
    """A component that takes part in every turn."""

    async def prepare(self, turn: TurnState) -> None:
        """Before generation: add context blocks, tell statements, etc.

        Raises:
            DMHAError: only for errors the client must see (e.g. a statement syntax error).
        """
        ...

    async def review(self, turn: TurnState, reply: GenerationResult, regenerate: Regenerate) -> GenerationResult:
        """After generation: check the reply; return it, or a corrected one."""
        ...

    def committed(self, turn: TurnState, stored: Sequence[Turn]) -> None:
        """The turn is stored: schedule background work (must not block)."""
        ...


def resolve_options(
    limits: LimitsConfig,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    timeout: float | None = None,
) -> GenerationOptions:
    """Turn request fields into validated options, applying defaults and limits.

    Args:
        limits: the ``limits`` config section.
        temperature: 0 (greedy, default) or ``MIN_TEMPERATURE`` to ``MAX_TEMPERATURE``.
        top_p: in (0, 1]; default 1.
        max_new_tokens: 1 to ``limits.max_new_tokens``.
        seed: sampling seed, 0 to ``MAX_SEED``.
        stop: up to ``MAX_STOP_SEQUENCES`` non-empty stop sequences of at most
            ``MAX_STOP_CHARS`` characters.
        timeout: seconds left before the client's deadline.

    Returns:
        The options.

    Raises:
        InvalidArgument: a field is out of range (named, with its limit).
    """
    t = 0.0 if temperature is None else float(temperature)
    # Below MIN_TEMPERATURE, logits / t overflow float32 and softmax yields NaN; such
    # values mean "greedy" in practice, but silently changing them would hide the bug.
    if not (t == 0.0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise InvalidArgument(
            "options.temperature",
            f"is {t:.3g}; must be between 0 and {MAX_TEMPERATURE:g} (0 = greedy; else at least {MIN_TEMPERATURE:g})",
        )
    p = 1.0 if top_p is None else float(top_p)
    if not 0.0 < p <= 1.0:
        raise InvalidArgument("options.top_p", f"is {p:.3g}; must be in (0, 1]")
    n = limits.default_new_tokens if max_new_tokens is None else int(max_new_tokens)
    if not 1 <= n <= limits.max_new_tokens:
        raise InvalidArgument("options.max_new_tokens", f"is {n}; must be 1 to the limit {limits.max_new_tokens}")
    if seed is not None and not 0 <= int(seed) <= MAX_SEED:
        raise InvalidArgument("options.seed", f"is {seed}; must be between 0 and {MAX_SEED}")
    stops = tuple(stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("options.stop", f"has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES}")
    for s in stops:
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidArgument("options.stop", f"a sequence is {len(s)} characters; must be 1 to {MAX_STOP_CHARS}")
    deadline = time.monotonic() + timeout if timeout is not None else None
    return GenerationOptions(max_new_tokens=n, temperature=t, top_p=p, seed=seed, deadline=deadline, stop=stops)


class ChatPipeline:
    """Runs chat turns.

    Args:
        llm: the serving engine.
        working: working memory.
        model_cfg: for the system prompt.
        limits: message size limits.
        hooks: long-term memory, knowledge base, monitor... in the order they run.
    """

    def __init__(
        self,
        llm: LLM,
        working: WorkingMemory,
        model_cfg: ModelConfig,
        limits: LimitsConfig,
        hooks: Sequence[TurnHook] = (),
    ) -> None:
        self._llm = llm
        self._working = working
        self._model_cfg = model_cfg
        self._limits = limits
        self._hooks = list(hooks)

    def _validate(self, message: str) -> None:
        size = len(message.encode("utf-8"))
        if not message.strip():
            raise InvalidArgument("message", "is empty")
        if size > self._limits.max_message_bytes:
            raise InvalidArgument("message", f"is {size} bytes; limit {self._limits.max_message_bytes}")

    async def run(
        self,
        principal: Principal,
        session_id: str,
        message: str,
        options: GenerationOptions,
        request_id: str = "",
    ) -> AsyncIterator[str | TurnResult]:
        """Run one turn, yielding reply text deltas and then one :class:`TurnResult`.

        Args:
            principal: the caller.
            session_id: an existing session of the caller, or "" for a new one.
            message: the user's message.
            options: validated generation options (see :func:`resolve_options`).
            request_id: for logs and the result.

        Raises:
            InvalidArgument: empty/oversize message or bad session id.
            Unavailable: working memory is down (nothing was stored).
            ResourceExhausted: the generation queue is full.
        """
        self._validate(message)
        session_id = check_id(session_id, "session_id") if session_id else new_session_id()
        user = principal.user_id
        history = await run_blocking(self._working.recent, user, session_id)
        if self._model_cfg.reply_copy_ngram:
            earlier = tuple(t.text for t in history if t.role == "assistant")
            options = dataclasses.replace(options, avoid=earlier, avoid_ngram=self._model_cfg.reply_copy_ngram)
        turn = TurnState(principal, session_id, message, message, options, request_id, tuple(history))
        for hook in self._hooks:
            await hook.prepare(turn)

        if turn.chat_text.strip():
            reply: GenerationResult | None = None
            async for item in self._generate(history, turn, turn.blocks):
                if isinstance(item, TokenDelta):
                    yield item.text
                else:
                    reply = item
            assert reply is not None

            async def regenerate(extra: Sequence[ContextBlock]) -> GenerationResult:
                prompt = await run_blocking(self._build, history, turn, [*extra, *turn.blocks])
                return await self._llm.complete(prompt.messages, turn.options)

            for hook in self._hooks:
                reply = await hook.review(turn, reply, regenerate)
        else:
            # Only statements: the knowledge base's notice is the whole reply.
            reply = GenerationResult(
                text=turn.notice or "Noted.",
                prompt_tokens=0,
                completion_tokens=0,
                finish_reason="stop",
                model_version=self._llm.handle.version,
            )
            yield reply.text

        now = time.time()
        stored = [
            Turn(new_turn_id(), user, session_id, "user", message, now),
            Turn(new_turn_id(), user, session_id, "assistant", reply.text, now),
        ]
        await run_blocking(self._working.append, stored)
        for hook in self._hooks:
            hook.committed(turn, stored)
        yield TurnResult(
            session_id=session_id,
            user_turn_id=stored[0].turn_id,
            assistant_turn_id=stored[1].turn_id,
            text=reply.text,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
            model_version=reply.model_version,
            request_id=request_id,
            memories=tuple(turn.memories),
            statements=tuple(turn.statements),
            claims=tuple(turn.claims),
            events=tuple(turn.events),
            warnings=tuple(turn.warnings),
            notice=turn.notice,
            mean_logprob=reply.mean_logprob,
        )

    def _build(self, history: Sequence[Turn], turn: TurnState, blocks: Sequence[ContextBlock]) -> BuiltPrompt:
        builder = PromptBuilder(self._llm.render_prompt, self._model_cfg.system_prompt, self._llm.handle.max_positions)
        past = [ChatMessage(t.role, t.text) for t in history if t.role in ("user", "assistant")]
        return builder.build(past, turn.chat_text, turn.options.max_new_tokens, blocks)

    async def _generate(
        self, history: Sequence[Turn], turn: TurnState, blocks: Sequence[ContextBlock]
    ) -> AsyncIterator[TokenDelta | GenerationResult]:
        # Templating and tokenising every candidate history is CPU work: off the loop.
        prompt = await run_blocking(self._build, history, turn, blocks)
        stream = self._llm.stream(prompt.messages, turn.options)
        try:
            async for item in stream:
                yield item
        finally:
            # Closing the engine's stream cancels generation when the client goes away.
            await stream.aclose()


async def drain(pipeline_run: AsyncIterator[str | TurnResult]) -> TurnResult:
    """Consume a turn and return its result (Contextualize)."""
    result: TurnResult | None = None
    async for item in pipeline_run:
        if isinstance(item, TurnResult):
            result = item
    assert result is not None
    return result
