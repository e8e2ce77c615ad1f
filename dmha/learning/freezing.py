"""TorchScript freezing of a merged model version, and the step model that serves it.

``freeze`` traces :class:`~dmha.learning.steps.LlamaStepCore` (prefill and decode with
a flat key/value cache) with ``torch.jit.trace_module``, then ``torch.jit.freeze``
(weights become constants, so the graph can be folded) and
``torch.jit.optimize_for_inference``. The result is checked against the eager model
on two prompt lengths and a few decode steps before anyone may use it, and can be
saved and loaded with ``torch.jit.save`` / ``torch.jit.load``.

TorchScript is deprecated upstream but is still the supported freezing path on torch
2.13; its DeprecationWarnings are filtered here, around the jit calls only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dmha.errors import FreezeError
from dmha.learning.steps import EagerStepModel, LlamaStepCore, UnsupportedArchitecture
from dmha.llm.base import Past
from dmha.llm.engine import pick_device as serving_device

__all__ = ["FrozenStepModel", "freeze", "pick_device", "verify_step_model"]

log = logging.getLogger(__name__)

# Two lengths that are not the traced one: a graph that baked in the example's
# length fails one of them.
_TRACE_LEN = 7
_CHECK_LENS = (5, 13)


@contextlib.contextmanager
def _jit_quietly() -> Iterator[None]:
    """Filter the known TorchScript deprecation warnings (and only those)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit.*", category=DeprecationWarning)
        yield


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        FreezeError: ``cuda`` was asked for and is not available.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise FreezeError("freeze_device is 'cuda' but CUDA is not available")
    return serving_device(device)


class FrozenStepModel:
    """:class:`~dmha.llm.base.StepModel` over a frozen TorchScript module.

    The module's ``forward`` is the prefill and its ``decode`` method the decode step;
    the cache is a flat tuple ``(k0, v0, k1, v1, ...)`` of ``[B, kv_heads, seq, head_dim]``.

    Args:
        module: a module produced by :func:`freeze` (or loaded with :meth:`load`).
        device: where it runs.
    """

    kind = "frozen"

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run the prompt.

        Args:
            input_ids: ``LongTensor[1, T]`` (any T >= 1).

        Returns:
            ``(logits[1, vocab]`` of the last position, the cache).
        """
        logits, past = self.module(input_ids.to(self.device))
        return logits, tuple(past)

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, past: Past) -> tuple[torch.Tensor, Past]:
        """Feed one token.

        Args:
            token: ``LongTensor[1, 1]``.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[1, vocab], the new cache)``.
        """
        logits, new = self.module.decode(token.to(self.device), tuple(past))
        return logits, tuple(new)

    def save(self, path: Path) -> None:
        """Write the module (``torch.jit.save``); the caller provides atomicity."""
        with _jit_quietly():
            torch.jit.save(self.module, str(path))

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "auto") -> FrozenStepModel:
        """Load a module written by :meth:`save`.

        Args:
            path: the file.
            device: ``auto``, ``cpu``, ``cuda`` or a torch device.

        Returns:
            The step model.

        Raises:
            FreezeError: the file is unreadable or not a frozen step module.
        """
        dev = pick_device(device) if isinstance(device, str) else device
        try:
            with _jit_quietly():
                module = torch.jit.load(str(path), map_location=dev)
        except (RuntimeError, OSError, ValueError) as exc:
            raise FreezeError(f"cannot load frozen module {path}: {exc}") from exc
        if not hasattr(module, "decode"):
            raise FreezeError(f"{path} is not a frozen step module (no decode method)")
        return cls(module, dev)


@torch.inference_mode()
def verify_step_model(
    candidate: Any,
    reference: Any,
    vocab_size: int,
    lengths: Sequence[int] = _CHECK_LENS,
    decode_steps: int = 4,
    seed: int = 0,
) -> float:
    """Largest |logit| difference between two step models over prefills and decodes.

    Args:
        candidate: the step model under test.
        reference: the step model it must match (eager).
        vocab_size: token ids are drawn below this.
        lengths: prompt lengths to try.
        decode_steps: greedy decode steps after each prefill.
        seed: seeds the random prompts.

    Returns:
        The maximum absolute difference seen.
    """
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in lengths:
        ids = torch.randint(0, vocab_size, (1, n), generator=gen)
        a, pa = candidate.prefill(ids)
        b, pb = reference.prefill(ids)
        for _ in range(decode_steps + 1):
            worst = max(worst, float((a.float().cpu() - b.float().cpu()).abs().max()))
            token = b.argmax(-1, keepdim=True).cpu()
            a, pa = candidate.decode(token, pa)
            b, pb = reference.decode(token, pb)
    return worst


def freeze(
    model: Any,
    path: Path | None = None,
    device: str = "auto",
    tolerance: float = 1e-3,
) -> FrozenStepModel:
    """Trace, freeze, optimise and verify a merged model.

    Args:
        model: a merged Llama-family ``PreTrainedModel`` (not modified; copied when
            it has to move to another device).
        path: when given, the frozen module is saved there.
        device: ``auto``, ``cpu`` or ``cuda``.
        tolerance: largest |logit| difference from eager accepted.

    Returns:
        The verified step model.

    Raises:
        FreezeError: the architecture is not supported, tracing failed, or the frozen
            module disagrees with eager beyond ``tolerance``.
    """
    started = time.monotonic()
    dev = pick_device(device)
    src = model if next(model.parameters()).device == dev else copy.deepcopy(model).to(dev)
    src.eval()
    try:
        core = LlamaStepCore(src).eval()
    except UnsupportedArchitecture as exc:
        raise FreezeError(f"cannot freeze this model: {exc}") from exc
    vocab = int(src.config.vocab_size)
    example = torch.randint(0, vocab, (1, _TRACE_LEN), generator=torch.Generator().manual_seed(1))
    example = example.to(dev)
    try:
        with _jit_quietly(), torch.no_grad():
            # A TracerWarning means part of the graph was frozen to the example's
            # shapes or values: refuse the trace rather than serve a wrong one.
            warnings.simplefilter("error", torch.jit.TracerWarning)
            _, past = core(example)
            traced = torch.jit.trace_module(
                core,
                {"forward": (example,), "decode": (example[:, :1], past)},
                check_trace=False,
            )
            frozen = torch.jit.freeze(traced, preserved_attrs=["decode"])
            frozen = torch.jit.optimize_for_inference(frozen, other_methods=["decode"])
    except (RuntimeError, TypeError, ValueError, SystemError, torch.jit.TracerWarning) as exc:
        # SystemError: a TracerWarning raised inside a C++ callback surfaces as one.
        raise FreezeError(f"tracing failed: {exc}") from exc
    step_model = FrozenStepModel(frozen, dev)
    if next(src.parameters()).dtype in (torch.float16, torch.bfloat16):
        # Half-precision kernels of the traced and the eager path round differently.
        tolerance = max(tolerance, 0.1)
    with _jit_quietly():
        # The first calls also warm up the profiling executor before serving.
        diff = verify_step_model(step_model, EagerStepModel(src), vocab)
    if not diff <= tolerance:
        raise FreezeError(f"frozen module differs from eager by {diff:.3g} > {tolerance:.3g}")
    if path is not None:
        step_model.save(path)
    log.info("froze model on %s in %.1fs (max |diff| %.2g)", dev, time.monotonic() - started, diff)
    return step_model
