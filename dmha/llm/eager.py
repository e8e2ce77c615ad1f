"""The eager Hugging Face model behind the :class:`~dmha.llm.base.StepModel` Protocol."""

from __future__ import annotations

from typing import Any

import torch

from dmha.llm.base import Past

__all__ = ["EagerStepModel"]


class EagerStepModel:
    """Drives a ``PreTrainedModel`` one step at a time with its own Cache object.

    Args:
        model: a causal LM in eval mode.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run the prompt; see :meth:`dmha.llm.base.StepModel.prefill`."""
        out = self.model(input_ids=input_ids, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, past: Past) -> tuple[torch.Tensor, Past]:
        """Feed one token; see :meth:`dmha.llm.base.StepModel.decode`."""
        out = self.model(input_ids=token, past_key_values=past, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values
