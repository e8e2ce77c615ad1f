"""Utility gates of the edit modules: goodness and the IB-JSD loss that trains them.

For module ``i`` with utility ``u_i = σ(logit_i)``, the goodness measured on a step is

    Q_i = u_i · |∇_out L|_i / (|∇_W L|_i + ε),   then divided by max_j Q_j  (so Q ∈ [0, 1])

where ``|∇_out L|`` is the gradient norm at the module's output (how much the loss
cares about what the module writes) and ``|∇_W L|`` the gradient norm of its own
factors. The learner's utility head is trained towards ``Q`` with

    IB-JSD(u, Q) = mean_i JSD(Bernoulli(u_i) || Bernoulli(Q_i)) + β · mean_i u_i

the Jensen-Shannon divergence between the gate and its goodness plus an
information-bottleneck price on keeping modules open, so only modules that earn
their place stay on.
"""

from __future__ import annotations

import torch

__all__ = ["goodness", "ib_jsd", "utility_entropy"]


def goodness(utilities: torch.Tensor, grad_out: torch.Tensor, grad_w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``Q`` per module, normalised to [0, 1] (all zeros when every module is idle).

    Args:
        utilities: ``[L]`` current ``σ(logits)``.
        grad_out: ``[L]`` output-gradient norms.
        grad_w: ``[L]`` parameter-gradient norms.
        eps: keeps the ratio finite for a module with no parameter gradient.

    Returns:
        ``[L]`` goodness.

    Raises:
        ValueError: the shapes differ.
    """
    if not (utilities.shape == grad_out.shape == grad_w.shape):
        raise ValueError("utilities, grad_out and grad_w must have the same shape")
    q = utilities * grad_out / (grad_w + eps)
    q = torch.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    top = q.max() if q.numel() else q.new_zeros(())
    return q / top if float(top) > 0 else torch.zeros_like(q)


def _bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    q = q.clamp(1e-6, 1 - 1e-6)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def ib_jsd(utilities: torch.Tensor, target: torch.Tensor, beta: float = 0.05) -> torch.Tensor:
    """The utility head's loss.

    Args:
        utilities: ``[..., L]`` gate probabilities ``σ(logits)`` (differentiable).
        target: ``[..., L]`` goodness ``Q`` (no gradient).
        beta: the bottleneck price per open module.

    Returns:
        A scalar: mean JSD plus ``beta`` times the mean utility.
    """
    m = 0.5 * (utilities + target)
    jsd = 0.5 * _bernoulli_kl(utilities, m) + 0.5 * _bernoulli_kl(target, m)
    return jsd.mean() + beta * utilities.mean()


def utility_entropy(utilities: torch.Tensor) -> float:
    """Mean binary entropy of the gates in bits (1 = undecided, 0 = sure)."""
    p = utilities.clamp(1e-6, 1 - 1e-6)
    h = -(p * p.log2() + (1 - p) * (1 - p).log2())
    return float(h.mean()) if h.numel() else 0.0
