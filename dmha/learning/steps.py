"""Step models over an eager Hugging Face causal LM, and the traceable core behind freezing.

:class:`EagerStepModel` (defined in :mod:`dmha.llm.eager`, re-exported here) drives the
Hugging Face model itself. :class:`LlamaStepCore` re-expresses one Llama-family forward
with an explicit, flat key/value cache and shape-generic tensor code only, which is
what ``torch.jit.trace`` needs to record a graph that works for every prompt length:
the Hugging Face forward builds masks and cache positions with Python integers that a
trace would freeze to the example's length.

Besides the one-row ``forward`` / ``decode`` it offers ``prefill_padded`` /
``decode_padded`` for batches of streams of different lengths: left padding, an
attention mask and per-row positions, all carried by tensors so the trace stays
generic in batch size, prompt length and padding.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmha.learning.gated import GatedEdits
from dmha.llm.eager import EagerStepModel

__all__ = ["EagerStepModel", "LlamaStepCore", "UnsupportedArchitecture", "jit_quietly"]

# RoPE variants whose only effect is on ``inv_freq`` / ``attention_scaling``, computed
# once at init; "dynamic" variants change them with the sequence length and would
# need Python control flow inside the traced graph.
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn", "longrope_static"})


class UnsupportedArchitecture(ValueError):
    """The model is not a Llama-family decoder that :class:`LlamaStepCore` can express."""


@contextlib.contextmanager
def jit_quietly() -> Iterator[None]:
    """Filter the known TorchScript deprecation warnings (and only those)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit.*", category=DeprecationWarning)
        yield


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the batched methods can use oneDNN's linear kernel (CPU, float32)."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


@functools.cache
def _onednn_linear() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    # Scripted, not plain Python: the tracer cannot record the op's empty ``Scalar?[]``
    # argument, while a scripted call is recorded whole and inlined by freezing.
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    with jit_quietly():
        return torch.jit.script(linear)


class LlamaStepCore(nn.Module):
    """A Llama-family forward with a flat explicit cache, written to be traced.

    It borrows (does not copy) the Hugging Face model's submodules, so tracing it
    records the model's own weights. Prefill starts from an empty cache and uses a
    causal mask; decode feeds one position, which needs no mask at all. The padded
    methods take a ``[B, S]`` mask (1 = real token, 0 = left padding) covering the
    whole sequence so far, and derive each row's positions from it.

    Args:
        model: a ``LlamaForCausalLM``-shaped model (``model.model.layers[i].self_attn.q_proj``
            ..., ``model.lm_head``) with a static RoPE variant.
        onednn: compute the projections with oneDNN's linear kernel
            (``mkldnn::_linear_pointwise``; CPU float32 only) instead of ``F.linear``.
            Once :func:`~dmha.learning.freezing.prepack_onednn` has packed the frozen
            weights, a batched step runs ~2x faster than the default matmul on this
            project's CPUs (AMD EPYC) and a one-row step as fast.

    Raises:
        UnsupportedArchitecture: the model does not have that shape.
    """

    def __init__(self, model: Any, onednn: bool = False) -> None:
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
        mlp0 = layers[0].mlp
        # oneDNN needs every projection as a plain (weight, bias) linear: the Llama MLP.
        self.onednn = onednn and all(hasattr(mlp0, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [1 or B, T] -> cos, sin: [1 or B, 1, T, head_dim]
        freqs = positions.float()[:, :, None] * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype)[:, None, :, :]
        sin = (emb.sin() * self.attention_scaling).to(dtype)[:, None, :, :]
        return cos, sin

    def _proj(self, linear: Any, x: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return _onednn_linear()(x, linear.weight, linear.bias)
        return linear(x)

    def _mlp(self, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        if not self.onednn:
            return mlp(x)
        act = mlp.act_fn(self._proj(mlp.gate_proj, x)) * self._proj(mlp.up_proj, x)
        down = mlp.down_proj
        if isinstance(down, GatedEdits):
            # Gated edits wrap the plain linear: oneDNN computes the base, the edits add theirs.
            return self._proj(down.base, act) + down.change(act)
        return self._proj(down, act)

    def _run(
        self,
        input_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...] | None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        bsz = input_ids.size(0)
        q_len = input_ids.size(1)
        attn_mask: torch.Tensor | None = None
        # Sizes read from tensors stay symbolic in the trace (aten::size), so the
        # graph works for any prompt length and any cache length.
        if mask is None:
            start = past[0].size(2) if past is not None else 0
            positions = (torch.arange(q_len, device=input_ids.device) + start)[None, :]
        elif past is None:
            # Left-padded prompts: each row counts positions from its first real token.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            idx = torch.arange(q_len, device=input_ids.device)
            causal = idx[None, :] <= idx[:, None]
            # A padding position also sees itself, so no query row is fully masked
            # (that would give NaN, which the masked-out keys would still carry).
            attn_mask = (causal[None, None] & mask.bool()[:, None, None, :]) | (idx[None, :] == idx[:, None])
        else:
            positions = mask.sum(-1, keepdim=True) - 1
            attn_mask = mask.bool()[:, None, None, :]
        # F.embedding without padding_idx: that argument only affects gradients, and
        # its range check would turn a traced size into a Python bool.
        h = F.embedding(input_ids, self.embed.weight)
        cos, sin = self._rope(positions, h.dtype)
        new_past: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = self._proj(attn.q_proj, x).view(bsz, q_len, self.n_heads, self.head_dim).transpose(1, 2)
            k = self._proj(attn.k_proj, x).view(bsz, q_len, self.n_kv, self.head_dim).transpose(1, 2)
            v = self._proj(attn.v_proj, x).view(bsz, q_len, self.n_kv, self.head_dim).transpose(1, 2)
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
                attn_mask=attn_mask,
                is_causal=past is None and attn_mask is None,
                scale=self.scaling,
                enable_gqa=self.n_heads != self.n_kv,
            )
            o = o.transpose(1, 2).reshape(bsz, q_len, self.n_heads * self.head_dim)
            h = h + self._proj(attn.o_proj, o)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
        last = self.norm(h[:, -1, :])
        return self._proj(self.lm_head, last), tuple(new_past)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Prefill: ``input_ids[B, T]`` -> ``(logits[B, vocab], flat cache)``."""
        return self._run(input_ids, None)

    def decode(
        self, token: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Decode: ``token[B, 1]`` and the flat cache -> ``(logits[B, vocab], new cache)``."""
        return self._run(token, past)

    def prefill_padded(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Prefill left-padded prompts: ``input_ids[B, T]``, ``mask[B, T]`` -> ``(logits[B, vocab], cache)``."""
        return self._run(input_ids, None, mask)

    def decode_padded(
        self, token: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Decode a padded batch: ``token[B, 1]``, ``mask[B, S + 1]`` (cache and new token), cache."""
        return self._run(token, past, mask)
