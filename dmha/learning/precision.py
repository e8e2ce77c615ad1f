"""The numeric precision an edit trains in (the candidate is always built in float32)."""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["bf16_native", "training_copy"]


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        # oneDNN's own check: AVX512-BF16 / AMX. Without them bfloat16 is emulated and slower.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_copy(model: Any, precision: str) -> Any:
    """The model an edit trains on: ``model`` itself, or a bfloat16 copy of it.

    Training only chooses a direction: its teachers and students are computed by the
    same copy (so the locality KL is exactly 0 at step 0), the change itself is kept
    in float32 (:class:`NullSpaceDelta`), and the gate judges the float32 candidate
    as served. On this project's CPU (AVX512-BF16) an optimisation step measured 2.1x
    cheaper than in float32 (``bench/edit_speed.py``, BENCHMARKS.md).

    Args:
        model: the float32 model being edited (only read).
        precision: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where native).

    Returns:
        ``model`` (float32 or already another dtype), or its bfloat16 copy.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"unknown training precision {precision!r}")
    param = next(model.parameters())
    use = precision == "bfloat16" or (precision == "auto" and bf16_native(param.device))
    if not use or param.dtype != torch.float32:
        return model
    return copy.deepcopy(model).to(torch.bfloat16)
