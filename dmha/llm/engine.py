"""The serving engine: one model, many concurrent streams, safe hot swaps.

All generation happens on one dedicated thread (the scheduler) that owns the
model: requests are admitted from a bounded queue into cohorts that decode as
batches (see :mod:`dmha.llm.batching`); cohorts take turns, one token each per
pass, so a long reply cannot starve a new one and no two ``forward`` calls ever
race on the model. Each request captures the
:class:`ModelHandle` that was live when it arrived, so a swap never changes the
weights under a running stream. Results travel back to the event loop with
``call_soon_threadsafe``; the async side never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import torch

from dmha.config import LimitsConfig, ModelConfig
from dmha.errors import InvalidArgument, ResourceExhausted, Unavailable
from dmha.llm.base import (
    ChatMessage,
    GenerationOptions,
    GenerationResult,
    ModelHandle,
    TokenDelta,
)
from dmha.llm.batching import Cohort, Request, copy_guard, make_cohorts
from dmha.llm.eager import EagerStepModel
from dmha.process_resources import foreground

__all__ = ["HFEngine", "load_causal_lm", "load_eager_handle", "pick_device", "pick_dtype", "set_torch_threads"]

# transformers' from_pretrained is not thread-safe: it switches global torch state
# (meta-device initialisation) while it runs, so two loads at once in one process (a
# live follower swapping versions while the learner loads the base model, or two
# in-process replicas) fail with "Cannot copy out of meta tensor". Every load takes it.
_LOAD_LOCK = threading.Lock()


def load_causal_lm(model_dir: Path, dtype: torch.dtype, device: str | torch.device) -> Any:
    """Load a Hugging Face causal LM folder onto ``device``, one load at a time per process.

    Args:
        model_dir: the model folder.
        dtype: parameter dtype.
        device: where the weights go.

    Returns:
        The model (a ``PreTrainedModel``) in eval mode.
    """
    from transformers import AutoModelForCausalLM

    with _LOAD_LOCK:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()


log = logging.getLogger(__name__)


def set_torch_threads(threads: int | None) -> int:
    """Apply the configured intra-op thread count.

    Args:
        threads: explicit count, or None for the default (1 on <= 2 cores, else half).

    Returns:
        The count applied.
    """
    cores = os.cpu_count() or 1
    n = threads if threads is not None else (1 if cores <= 2 else max(1, cores // 2))
    torch.set_num_threads(n)
    return n


def pick_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 (or fp16) on CUDA, fp32 on CPU."""
    if choice != "auto":
        return getattr(torch, choice)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_eager_handle(model_dir: Path, cfg: ModelConfig, version: str = "base") -> ModelHandle:
    """Load a Hugging Face folder as a servable eager :class:`ModelHandle`.

    Args:
        model_dir: the model folder.
        cfg: the ``model`` config section (device, dtype, context budget).
        version: registry version id of these weights.

    Returns:
        The handle.
    """
    from transformers import AutoTokenizer

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_causal_lm(model_dir, dtype, device)
    return ModelHandle(
        version=version,
        tokenizer=tokenizer,
        step_model=EagerStepModel(model),
        max_positions=min(cfg.max_context_tokens, int(model.config.max_position_embeddings)),
        eos_token_ids=eos_ids(tokenizer, model),
        kind="eager",
        torch_model=model,
    )


def render_chat(tokenizer: Any, messages: Sequence[tuple[str, str]]) -> list[int]:
    """The one chat rendering: template with the generation prompt, then tokenise.

    Serving, training and the gate all render through here, so an edit is learned
    and checked on exactly the token ids the served model sees.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: ``(role, text)`` pairs, system message first.

    Returns:
        Prompt token ids.
    """
    text = tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages],
        tokenize=False,
        add_generation_prompt=True,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """Every token id that ends a reply (tokenizer EOS, generation config, ChatML end)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return frozenset(ids)


class HFEngine:
    """The :class:`~dmha.llm.base.LLM` implementation for Hugging Face causal LMs.

    Args:
        handle: the initial live model.
        limits: request limits (queue size).
        max_batch_size: streams decoded per scheduler pass.
    """

    def __init__(self, handle: ModelHandle, limits: LimitsConfig, max_batch_size: int = 8) -> None:
        self._handle = handle
        self._limits = limits
        self._max_active = max_batch_size
        self._pending: queue.Queue[Request] = queue.Queue(maxsize=limits.max_queued_requests)
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dmha-generate", daemon=True)
        self._thread.start()

    # -- LLM protocol ---------------------------------------------------------------

    @property
    def handle(self) -> ModelHandle:
        """The live model version."""
        return self._handle

    def swap(self, handle: ModelHandle) -> None:
        """Make ``handle`` live; running streams keep the handle they started with."""
        with self._swap_lock:
            old, self._handle = self._handle, handle
        log.info("model version %s is live (was %s, %s)", handle.version, old.version, handle.kind)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the live tokenizer."""
        return len(self._handle.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_prompt(self, messages: Sequence[ChatMessage], handle: ModelHandle | None = None) -> list[int]:
        """Apply the chat template with the generation prompt, then tokenise.

        Args:
            messages: the conversation so far, system message first.
            handle: tokenizer to use (default: the live one).

        Returns:
            Prompt token ids.
        """
        tok = (handle or self._handle).tokenizer
        return render_chat(tok, [(m.role, m.text) for m in messages])

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> AsyncGenerator[TokenDelta | GenerationResult, None]:
        """Yield text deltas, then one :class:`GenerationResult`.

        Closing the iterator early (client gone) cancels generation.

        Raises:
            InvalidArgument: the prompt leaves no room for a reply.
            ResourceExhausted: too many requests are queued.
        """
        handle = self._handle
        prompt_ids = self.render_prompt(messages, handle)
        if len(prompt_ids) >= handle.max_positions:
            raise InvalidArgument(
                "message",
                f"prompt is {len(prompt_ids)} tokens; the model's context is {handle.max_positions}",
            )
        req = Request(
            handle=handle,
            prompt_ids=prompt_ids,
            options=options,
            loop=asyncio.get_running_loop(),
            out=asyncio.Queue(),
            guard=copy_guard(handle.tokenizer, options.avoid, options.avoid_ngram),
        )
        if options.seed is not None:
            req.generator = torch.Generator().manual_seed(options.seed)
        try:
            self._pending.put_nowait(req)
        except queue.Full:
            raise ResourceExhausted(
                f"generation queue is full ({self._limits.max_queued_requests} waiting); retry later"
            ) from None
        try:
            while True:
                item = await req.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, GenerationResult):
                    return
        finally:
            req.cancelled.set()

    async def complete(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> GenerationResult:
        """Generate a whole reply (see :meth:`stream`)."""
        result: GenerationResult | None = None
        async for item in self.stream(messages, options):
            if isinstance(item, GenerationResult):
                result = item
        assert result is not None
        return result

    def probe(self, stall_seconds: float) -> None:
        """The health probe: the scheduler thread runs and makes progress.

        Args:
            stall_seconds: a scheduler pass (one token for each running stream) taking
                longer than this counts as stuck.

        Raises:
            Unavailable: the thread has stopped or is stuck.
        """
        if not self._thread.is_alive():
            raise Unavailable("the scheduler thread has stopped")
        idle = time.monotonic() - self._beat
        if idle > stall_seconds:
            raise Unavailable(f"no scheduler pass for {idle:.0f} s")

    def close(self) -> None:
        """Stop the scheduler thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    # -- the scheduler thread -------------------------------------------------------

    def _run(self) -> None:
        cohorts: list[Cohort] = []
        while not self._stop.is_set():
            self._beat = time.monotonic()
            admitted: list[Request] = []
            if not cohorts:
                try:
                    admitted.append(self._pending.get(timeout=0.1))
                except queue.Empty:
                    continue
            room = self._max_active - sum(len(c.requests) for c in cohorts) - len(admitted)
            while room > 0:
                try:
                    admitted.append(self._pending.get_nowait())
                except queue.Empty:
                    break
                room -= 1
            cohorts.extend(make_cohorts(admitted))
            # Background derivations pause for the interpreter lock while this decodes.
            with foreground():
                for cohort in cohorts:
                    try:
                        cohort.step()
                    except Exception as exc:  # a model failure ends these streams, not the server
                        log.exception("generation failed")
                        for req in cohort.requests:
                            req.send(exc)
                        cohort.requests = []
            cohorts = [c for c in cohorts if c.requests]
