"""The numeric precision an edit trains in (the candidate is always built in float32)."""

from __future__ import annotations

import copy
import logging
import time
from functools import cache
from typing import Any

import torch

__all__ = ["bf16_faster", "bf16_native", "resolve_precision", "training_copy"]

log = logging.getLogger(__name__)

_MIN_SPEEDUP = 1.25
"""How much faster a bfloat16 training pass must measure to be used by ``auto``."""


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` claims native bfloat16 matrix multiplication."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        # oneDNN's own check: AVX512-BF16 / AMX. Without them bfloat16 is emulated and slower.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _pass_seconds(dtype: torch.dtype, device: torch.device) -> float:
    """Best of 3 forward+backward passes of a layer shaped like a small LM's MLP."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(576, 1536).to(device=device, dtype=dtype)
    x = torch.randn(256, 576, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    lin(x).sum().backward()  # warm-up (kernel selection, allocation)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        lin(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


@cache
def bf16_faster(device: torch.device) -> bool:
    """Whether bfloat16 training passes are measurably faster than float32 on ``device``.

    A CPU may report AVX512-BF16 and still run bfloat16 slower than float32 (measured
    on two hosts of the same cloud type: 2.1x faster on one, 2.3x slower on the other),
    so ``auto`` trusts a measurement, not the flag: a layer's forward and backward
    passes timed in both precisions, alternated, best of 3 each (well under a second,
    once per process and device).
    """
    if not bf16_native(device):
        return False
    f32 = b16 = float("inf")
    for _ in range(2):
        f32 = min(f32, _pass_seconds(torch.float32, device))
        b16 = min(b16, _pass_seconds(torch.bfloat16, device))
    faster = f32 / b16 >= _MIN_SPEEDUP
    log.info("bfloat16 training passes %.2fx float32's speed: %s", f32 / b16, "used" if faster else "not used")
    return faster


def training_copy(model: Any, precision: str) -> Any:
    """The model an edit trains on: ``model`` itself, or a bfloat16 copy of it.

    Training only chooses a direction: its teachers and students are computed by the
    same copy (so the locality KL is exactly 0 at step 0), the change itself is kept
    in float32 (:class:`NullSpaceDelta`), and the gate judges the float32 candidate
    as served. On one host of this project's CPU type an optimisation step measured 2.1x
    cheaper than in float32, on another 2.3x dearer (``bench/edit_speed.py``,
    BENCHMARKS.md): hence ``auto`` measures.

    Args:
        model: the float32 model being edited (only read).
        precision: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where measured
            faster, :func:`bf16_faster`).

    Returns:
        ``model`` (float32 or already another dtype), or its bfloat16 copy.

    Raises:
        ValueError: an unknown precision.
    """
    param = next(model.parameters())
    if resolve_precision(precision, param.device) != "bfloat16" or param.dtype != torch.float32:
        return model
    return copy.deepcopy(model).to(torch.bfloat16)


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` (``auto``, ``float32`` or ``bfloat16``) trains in on ``device``.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"unknown training precision {precision!r}")
    if precision == "auto":
        return "bfloat16" if bf16_faster(device) else "float32"
    return precision
