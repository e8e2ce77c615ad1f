"""The language model: the :class:`LLM` contract, prompts, and the batching HF engine.

:class:`HFEngine` serves a :class:`ModelHandle` (eager or TorchScript-frozen) with
continuous batching; :class:`PromptBuilder` fits history and context blocks into the
model's window; :func:`ensure_model` prepares the default model once.
"""

from __future__ import annotations

from dmha.llm.base import (
    LLM,
    BatchStepModel,
    ChatMessage,
    FinishReason,
    GenerationOptions,
    GenerationResult,
    ModelHandle,
    StepModel,
    TokenDelta,
)
from dmha.llm.engine import HFEngine, pick_device, set_torch_threads
from dmha.llm.model_store import default_model_dir, ensure_model
from dmha.llm.prompt import BuiltPrompt, ContextBlock, PromptBuilder

__all__ = [
    "LLM",
    "BatchStepModel",
    "BuiltPrompt",
    "ChatMessage",
    "ContextBlock",
    "FinishReason",
    "GenerationOptions",
    "GenerationResult",
    "HFEngine",
    "ModelHandle",
    "PromptBuilder",
    "StepModel",
    "TokenDelta",
    "default_model_dir",
    "ensure_model",
    "pick_device",
    "set_torch_threads",
]
