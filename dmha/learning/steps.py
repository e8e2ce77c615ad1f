"""Step models over an eager Hugging Face causal LM, and the traceable core behind freezing.

:class:`EagerStepModel` (defined in :mod:`dmha.llm.eager`, re-exported here) drives the
Hugging Face model itself. :class:`LlamaStepCore` re-expresses one Llama-family forward
with an explicit, flat key/value cache and shape-generic tensor code only, which is
what ``torch.jit.trace`` needs to record a graph that works for every prompt length:
the Hugging Face forward builds masks and cache positions with Python integers that a
trace would freeze to the example's length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmha.llm.eager import EagerStepModel

__all__ = ["EagerStepModel", "LlamaStepCore", "UnsupportedArchitecture"]

# RoPE variants whose only effect is on ``inv_freq`` / ``attention_scaling``, computed
# once at init; "dynamic" variants change them with the sequence length and would
# need Python control flow inside the traced graph.
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn", "longrope_static"})


class UnsupportedArchitecture(ValueError):
    """The model is not a Llama-family decoder that :class:`LlamaStepCore` can express."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaStepCore(nn.Module):
    """A Llama-family forward with a flat explicit cache, written to be traced.

    It borrows (does not copy) the Hugging Face model's submodules, so tracing it
    records the model's own weights. Prefill starts from an empty cache and uses a
    causal mask; decode feeds one position, which needs no mask at all.

    Args:
        model: a ``LlamaForCausalLM``-shaped model (``model.model.layers[i].self_attn.q_proj``
            ..., ``model.lm_head``) with a static RoPE variant.

    Raises:
        UnsupportedArchitecture: the model does not have that shape.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        try:
            inner = model.model
            layers = inner.layers
            attn0 = layers[0].self_attn
            rotary = inner.rotary_emb
            _ = (attn0.q_proj, attn0.k_proj, attn0.v_proj, attn0.o_proj, inner.norm)
            _ = (layers[0].mlp, layers[0].input_layernorm, layers[0].post_attention_layernorm)
            lm_head = model.lm_head
        except AttributeError as exc:
            raise UnsupportedArchitecture(f"not a Llama-family decoder: {exc}") from exc
        rope_type = getattr(rotary, "rope_type", "default")
        if rope_type not in _STATIC_ROPE:
            raise UnsupportedArchitecture(f"RoPE type {rope_type!r} depends on the length")
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            raise UnsupportedArchitecture("sliding-window attention is not supported")
        if hasattr(attn0, "q_norm") or hasattr(attn0, "k_norm"):
            raise UnsupportedArchitecture("per-head query/key norms are not supported")
        self.embed = inner.embed_tokens
        self.layers = layers
        self.norm = inner.norm
        self.lm_head = lm_head
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.scaling = float(attn0.scaling)
        # A buffer, not a Python float list: the trace must read it as a tensor.
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype)[None, None, :, :]
        sin = (emb.sin() * self.attention_scaling).to(dtype)[None, None, :, :]
        return cos, sin

    def _run(
        self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        bsz = input_ids.size(0)
        q_len = input_ids.size(1)
        start = past[0].size(2) if past is not None else 0
        # Sizes read from tensors stay symbolic in the trace (aten::size), so the
        # graph works for any prompt length and any cache length.
        positions = torch.arange(q_len, device=input_ids.device) + start
        # F.embedding without padding_idx: that argument only affects gradients, and
        # its range check would turn a traced size into a Python bool.
        h = F.embedding(input_ids, self.embed.weight)
        cos, sin = self._rope(positions, h.dtype)
        new_past: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(bsz, q_len, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(bsz, q_len, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(bsz, q_len, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if past is not None:
                k = torch.cat((past[2 * i], k), dim=2)
                v = torch.cat((past[2 * i + 1], v), dim=2)
            new_past.append(k)
            new_past.append(v)
            o = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=past is None,
                scale=self.scaling,
                enable_gqa=self.n_heads != self.n_kv,
            )
            o = o.transpose(1, 2).reshape(bsz, q_len, self.n_heads * self.head_dim)
            h = h + attn.o_proj(o)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = self.norm(h[:, -1, :])
        return self.lm_head(last), tuple(new_past)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Prefill: ``input_ids[B, T]`` -> ``(logits[B, vocab], flat cache)``."""
        return self._run(input_ids, None)

    def decode(
        self, token: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Decode: ``token[B, 1]`` and the flat cache -> ``(logits[B, vocab], new cache)``."""
        return self._run(token, past)
