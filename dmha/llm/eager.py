"""The eager Hugging Face model behind the :class:`~dmha.llm.base.StepModel` Protocol."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from dmha.llm.base import Past

__all__ = ["EagerStepModel"]


def _past_to_cache(past: Past) -> DynamicCache:
    """Wrap a flat ``(k0, v0, k1, v1, ...)`` tuple in a DynamicCache without copying.

    ``DynamicCache(ddp_cache_data)`` would ``torch.cat`` each tensor onto an empty one,
    copying the whole cache on every step; assigning the layer tensors does not.
    """
    layers = []
    for i in range(0, len(past), 2):
        layer = DynamicLayer()
        layer.keys, layer.values = past[i], past[i + 1]
        layer.dtype, layer.device = past[i].dtype, past[i].device
        layer.is_initialized = True
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def _cache_to_past(cache: Any) -> Past:
    out: list[torch.Tensor] = []
    for layer in cache.layers:
        out.append(layer.keys)
        out.append(layer.values)
    return tuple(out)


class EagerStepModel:
    """:class:`~dmha.llm.base.StepModel` over an eager Hugging Face causal LM.

    The model is used as is (no copy); it must not be trained while this serves it.
    A ``past`` handed back is never mutated later: every step builds new tensors,
    so a caller may keep an older cache (e.g. to branch) safely.

    Args:
        model: a ``PreTrainedModel`` with a causal-LM head.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.model.eval()
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run the prompt.

        Args:
            input_ids: ``LongTensor[1, T]``.

        Returns:
            ``(logits[1, vocab]`` of the last position, the flat cache).
        """
        out = self.model(
            input_ids=input_ids.to(self.device),
            past_key_values=DynamicCache(),
            use_cache=True,
            # Only the last position's logits are needed: skips a [T, vocab] matmul.
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], _cache_to_past(out.past_key_values)

    @torch.inference_mode()
    def prefill_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run left-padded prompts of different lengths as one batch.

        Args:
            input_ids: ``LongTensor[B, T]``, each prompt right-aligned.
            attention_mask: ``[B, T]``, 1 on real tokens, 0 on the padding.

        Returns:
            ``(logits[B, vocab]`` of the last position, the flat cache).
        """
        mask = attention_mask.to(self.device)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            # Positions restart at each row's first real token: a row computes what it would alone.
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], _cache_to_past(out.past_key_values)

    @torch.inference_mode()
    def decode_padded(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, past: Past
    ) -> tuple[torch.Tensor, Past]:
        """Feed one token per row of a padded batch.

        Args:
            tokens: ``LongTensor[B, 1]``.
            attention_mask: ``[B, S + 1]``: the cache's mask with a 1 appended for the new token.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[B, vocab], the new cache)``.
        """
        mask = attention_mask.to(self.device)
        out = self.model(
            input_ids=tokens.to(self.device),
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            past_key_values=_past_to_cache(past),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], _cache_to_past(out.past_key_values)

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, past: Past) -> tuple[torch.Tensor, Past]:
        """Feed one token.

        Args:
            token: ``LongTensor[1, 1]``.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[1, vocab], the new cache)``.
        """
        out = self.model(
            input_ids=token.to(self.device),
            past_key_values=_past_to_cache(past),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :], _cache_to_past(out.past_key_values)
