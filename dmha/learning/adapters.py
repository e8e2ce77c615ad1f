"""What an edit trains and how a stored delta becomes a model again.

:class:`NullSpaceDelta` wraps one ``down_proj`` while an edit trains (merged or
gated); :func:`apply_delta` rebuilds any version from the base weights and its
stored cumulative delta, the same way at training time, reload and freezing;
:func:`candidate_copy` is the model an edit starts from, and :func:`reaches` tells
which sequences a gated edit can change at all.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from typing import Any

import torch
from torch import nn

from dmha.learning.gated import GatedEdits, dense_names, install_gated, opens
from dmha.learning.generation import answer_logits
from dmha.learning.prompting import Sequence

__all__ = ["NullSpaceDelta", "apply_delta", "candidate_copy", "delta_name", "reaches"]


def delta_name(layer: int) -> str:
    """State-dict name of the weight an edit at ``layer`` changes."""
    return f"model.layers.{layer}.mlp.down_proj.weight"


class NullSpaceDelta(nn.Module):
    """``base(x) + scale · ((x U) A′ᵀ) Bᵀ``: a linear layer plus a confined low-rank change.

    Args:
        base: the frozen ``down_proj``.
        basis: ``[d_in, k]`` orthonormal columns the change may read.
        rank: rank of the change.
        scale: multiplies the change (the plan's adapter scale).
        generator: seeds ``A′``.
        threshold: when set, the change acts only on tokens with at least this share
            of their key energy in ``basis`` (a gated edit, :mod:`dmha.learning.gated`).
    """

    def __init__(
        self,
        base: nn.Linear | GatedEdits,
        basis: torch.Tensor,
        rank: int,
        scale: float,
        generator: torch.Generator,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        # The change is computed in float32 whatever the base's dtype: a bfloat16
        # training copy (``Editor(precision=...)``) must not round the small factors.
        device = next(base.parameters()).device
        self.basis: torch.Tensor
        self.register_buffer("basis", basis.float().to(device))
        k = basis.shape[1]
        init = torch.randn(rank, k, generator=generator) / math.sqrt(max(1, k))
        self.a = nn.Parameter(init.to(device))
        # B starts at zero: the wrapped model is exactly the live one at step 0.
        self.b = nn.Parameter(torch.zeros(int(base.out_features), rank, device=device))
        self.scale = scale
        self.threshold = threshold
        self.out_grad_sq = 0.0
        """Squared norm of the loss gradient at the change's output, summed since reset."""
        self.watch = False
        """When True, forward passes record in :attr:`opened` whether the gate opened."""
        self.opened = False
        """A gated change acted on some token since :attr:`watch` was last set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base output plus the change."""
        xf = x.float()
        read = xf @ self.basis
        change = (read @ self.a.T) @ self.b.T * self.scale
        if self.threshold is not None:
            # The rule GatedEdits.change applies, so what trains is what is served.
            gate = opens(read.square().sum(-1, keepdim=True), xf, self.threshold)
            if self.watch:
                self.opened = self.opened or bool(gate.any())
            change = change * gate.float()
        if change.requires_grad:
            change.register_hook(self._record_grad)
        return self.base(x) + change.to(x.dtype)

    def _record_grad(self, grad: torch.Tensor) -> None:
        self.out_grad_sq += float(grad.float().pow(2).sum())

    def grad_norms(self) -> tuple[float, float]:
        """``(|∇_out L|, |∇_W L|)`` of the last backward pass, then reset."""
        w = sum(float(p.grad.float().pow(2).sum()) for p in (self.a, self.b) if p.grad is not None)
        out = math.sqrt(self.out_grad_sq)
        self.out_grad_sq = 0.0
        return out, math.sqrt(w)

    def delta(self) -> torch.Tensor:
        """The change as a dense ``[d_out, d_in]`` float32 matrix."""
        with torch.no_grad():
            return (self.scale * (self.b.float() @ (self.a.float() @ self.basis.float().T))).contiguous()

    def gated_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of the change in :func:`~dmha.learning.gated.append_edit`'s form (CPU, float32)."""
        with torch.no_grad():
            a = (self.a.float() @ self.basis.float().T).cpu()
            return a, (self.scale * self.b.float()).cpu()

    def bound(self, max_norm: float) -> None:
        """Scale ``B`` so that ``‖ΔW‖_F <= max_norm`` (no-op when already inside)."""
        if max_norm <= 0:
            return
        with torch.no_grad():
            norm = float(torch.linalg.matrix_norm(self.delta()))
            if norm > max_norm:
                self.b.mul_(max_norm / norm)


def apply_delta(model: Any, base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> None:
    """Set ``W = W_base + D`` for every dense matrix ``delta`` names, and install its gated edits.

    The same call builds the candidate at training time and every later reload, so a
    version's weights are bitwise the ones the gate evaluated. Dense entries are
    summed in float32 (in place); gated entries (:mod:`dmha.learning.gated`) replace
    the layers' ``down_proj`` by a :class:`~dmha.learning.gated.GatedEdits`.

    Args:
        model: the model to modify.
        base: name -> the base weight of every dense entry.
        delta: name -> the cumulative delta from base.

    Raises:
        KeyError: a delta names a weight the model or ``base`` lacks.
    """
    install_gated(model, {})  # plain linears first, so dense names resolve
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in dense_names(delta):
            d = delta[name]
            w = params[name]
            summed = base[name].float().to(w.device) + d.float().to(w.device)
            w.copy_(summed.to(w.dtype))
    install_gated(model, delta)


def candidate_copy(live_model: Any, private: set[str]) -> Any:
    """A copy of ``live_model`` in eval mode that shares every weight but the ``private`` ones.

    An edit only ever writes the edit layers' ``down_proj`` (dense deltas) or puts
    modules in front of them (gated ones), so copying the other ~97 % of the weights
    (a 540 MB ``deepcopy`` of the default model: ~5 s of each update on a 2-core
    host) bought nothing. Shared weights get their own ``Parameter`` objects, so
    nothing done to the copy's parameters (``requires_grad``) reaches the live model.

    Args:
        live_model: the serving model; only read.
        private: parameter names the copy gets its own storage for.

    Returns:
        The copy, with ``requires_grad`` off everywhere.
    """
    memo: dict[int, Any] = {}
    for name, p in live_model.named_parameters():
        if name not in private:
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in live_model.buffers():
        memo[id(b)] = b
    model = copy.deepcopy(live_model, memo).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reaches(model: Any, wrappers: Seq[NullSpaceDelta], seq: Sequence) -> bool:
    """Whether a gated change in ``model`` acts on some token of ``seq``.

    Exact whatever the change's values: a gate reads only its layer's input, which
    no change alters until some gate before it has opened.
    """
    for w in wrappers:
        w.watch, w.opened = True, False
    try:
        with torch.no_grad():
            answer_logits(model, [seq], prefix_len=0)
    finally:
        for w in wrappers:
            w.watch = False
    return any(w.opened for w in wrappers)
