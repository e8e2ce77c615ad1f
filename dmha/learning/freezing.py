"""TorchScript freezing of a merged model version, and the step model that serves it.

``freeze`` traces :class:`~dmha.learning.steps.LlamaStepCore` (prefill and decode with
a flat key/value cache, one row and left-padded batches) with ``torch.jit.trace_module``,
then ``torch.jit.freeze`` (weights become constants, so the graph can be folded) and
``torch.jit.optimize_for_inference``. The result is checked against the eager model
on two prompt lengths, a batch of mixed lengths (every row against eager run alone)
and a few decode steps before anyone may use it, and can be saved and loaded with
``torch.jit.save`` / ``torch.jit.load``.

On CPU (float32) the projections are traced as oneDNN linears over the plain
weights, which is what the file keeps. :class:`FrozenStepModel` serves copies of
the method graphs in which each such weight is swapped for oneDNN's packed layout
(:func:`serving_functions`; packed tensors cannot be saved, so this happens in
memory at every load). Packed, a batched step runs ~2x faster than the default
matmul on this project's CPUs and a one-row step as fast (see
:class:`~dmha.learning.steps.LlamaStepCore`); the plain copies are then dropped.

TorchScript is deprecated upstream but is still the supported freezing path on torch
2.13; its DeprecationWarnings are filtered here, around the jit calls only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dmha.errors import FreezeError
from dmha.learning.steps import (
    EagerStepModel,
    LlamaStepCore,
    UnsupportedArchitecture,
    jit_quietly,
    onednn_available,
)
from dmha.llm.base import Past
from dmha.llm.engine import pick_device as serving_device

__all__ = ["FrozenStepModel", "freeze", "pick_device", "serving_functions", "verify_step_model"]

log = logging.getLogger(__name__)

# Two lengths that are not the traced one: a graph that baked in the example's
# length fails one of them. The same holds for the batch: traced with two rows and
# one padding length, checked with three rows and other paddings.
_TRACE_LEN = 7
_TRACE_PAD = 3
_CHECK_LENS = (5, 13)
_CHECK_BATCH = (3, 11, 6)

_METHODS = ("forward", "decode", "prefill_padded", "decode_padded")


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        FreezeError: ``cuda`` was asked for and is not available.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise FreezeError("freeze_device is 'cuda' but CUDA is not available")
    return serving_device(device)


def _prepack(graph: Any, packed: dict[tuple[int, ...], torch.Tensor]) -> None:
    """Point every oneDNN linear of ``graph`` at a packed copy of its constant weight."""
    for node in list(graph.nodes()):
        if node.kind() != "mkldnn::_linear_pointwise":
            continue
        weight = node.inputsAt(1)
        if weight.node().kind() != "prim::Constant":
            continue
        plain = weight.node().t("value")
        # Methods share their weight constants: pack each weight once for all of them.
        key = (plain.data_ptr(), *plain.shape, *plain.stride())
        if key not in packed:
            packed[key] = torch.ops.mkldnn._reorder_linear_weight(plain)
        # A new constant, not the old one changed: the tied embedding reads the plain one.
        const = graph.create("prim::Constant")
        const.t_("value", packed[key])
        const.output().setType(weight.type())
        const.insertBefore(node)
        node.replaceInput(1, const.output())


def serving_functions(module: Any) -> dict[str, Callable[..., Any]]:
    """Standalone functions over copies of a frozen module's method graphs.

    oneDNN repacks a plain weight on every call; packing once is most of its speed.
    Packed tensors cannot be saved, so the packing is done here, in memory, on copies
    of the graphs (``module`` stays saveable). A frozen graph reads nothing from its
    module, so the copies drop that input and keep only the constants they use.

    Args:
        module: a frozen module with ``forward``, ``decode``, ``prefill_padded`` and
            ``decode_padded``.

    Returns:
        Method name -> function taking the method's arguments.

    Raises:
        FreezeError: a method is missing or still reads module attributes (not frozen).
    """
    missing = [m for m in _METHODS if not hasattr(module, m)]
    if missing:
        raise FreezeError(f"the frozen module lacks {', '.join(missing)} (frozen by an older version); re-freeze it")
    packed: dict[tuple[int, ...], torch.Tensor] = {}
    functions: dict[str, Callable[..., Any]] = {}
    for name in _METHODS:
        graph = getattr(module, name).graph.copy()
        if next(iter(graph.inputs())).uses():
            raise FreezeError(f"method {name} reads module attributes: the module is not frozen")
        try:
            _prepack(graph, packed)
            graph.eraseInput(0)
            torch._C._jit_pass_dce(graph)
            functions[name] = torch._C._create_function_from_graph(f"dmha_frozen_{name}", graph)
        except RuntimeError as exc:
            raise FreezeError(f"cannot prepare method {name} for serving: {exc}") from exc
    return functions


class FrozenStepModel:
    """:class:`~dmha.llm.base.BatchStepModel` over a frozen TorchScript module.

    The module's ``forward`` is the prefill and its ``decode`` method the decode step;
    ``prefill_padded`` / ``decode_padded`` run left-padded batches. The cache is a flat
    tuple ``(k0, v0, k1, v1, ...)`` of ``[B, kv_heads, seq, head_dim]``. The module is
    served through :func:`serving_functions` and not kept.

    Args:
        module: a module produced by :func:`freeze` (or loaded with :meth:`load`).
        device: where it runs.

    Raises:
        FreezeError: the module is not a frozen step module of this version (e.g. one
            frozen before batched decoding existed).
    """

    kind = "frozen"

    def __init__(self, module: Any, device: torch.device) -> None:
        self.device = device
        with jit_quietly():
            self._fn = serving_functions(module)

    def _call(self, method: str, *args: Any) -> tuple[torch.Tensor, Past]:
        logits, past = self._fn[method](*args)
        return logits, tuple(past)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run the prompt.

        Args:
            input_ids: ``LongTensor[B, T]`` (any T >= 1; rows of one length).

        Returns:
            ``(logits[B, vocab]`` of the last position, the cache).
        """
        return self._call("forward", input_ids.to(self.device))

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, past: Past) -> tuple[torch.Tensor, Past]:
        """Feed one token.

        Args:
            token: ``LongTensor[B, 1]``.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[B, vocab], the new cache)``.
        """
        return self._call("decode", token.to(self.device), tuple(past))

    @torch.inference_mode()
    def prefill_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Run left-padded prompts of different lengths as one batch.

        Args:
            input_ids: ``LongTensor[B, T]``, each prompt right-aligned.
            attention_mask: ``[B, T]``, 1 on real tokens, 0 on the padding.

        Returns:
            ``(logits[B, vocab]`` of each row's last position, the cache).
        """
        return self._call("prefill_padded", input_ids.to(self.device), attention_mask.to(self.device))

    @torch.inference_mode()
    def decode_padded(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, past: Past
    ) -> tuple[torch.Tensor, Past]:
        """Feed one token per row of a padded batch.

        Args:
            tokens: ``LongTensor[B, 1]``.
            attention_mask: ``[B, S + 1]``: the cache's mask with a 1 appended.
            past: the cache returned by the previous call.

        Returns:
            ``(logits[B, vocab], the new cache)``.
        """
        return self._call("decode_padded", tokens.to(self.device), attention_mask.to(self.device), tuple(past))

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "auto") -> FrozenStepModel:
        """Load a module written by :meth:`save`.

        Args:
            path: the file.
            device: ``auto``, ``cpu``, ``cuda`` or a torch device.

        Returns:
            The step model.

        Raises:
            FreezeError: the file is unreadable or not a frozen step module of this
                version (rebuild it with :func:`freeze`).
        """
        dev = pick_device(device) if isinstance(device, str) else device
        try:
            with jit_quietly():
                module = torch.jit.load(str(path), map_location=dev)
        except (RuntimeError, OSError, ValueError) as exc:
            raise FreezeError(f"cannot load frozen module {path}: {exc}") from exc
        if not hasattr(module, "decode"):
            raise FreezeError(f"{path} is not a frozen step module (no decode method)")
        try:
            return cls(module, dev)
        except FreezeError as exc:
            raise FreezeError(f"{path}: {exc}") from exc


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@torch.inference_mode()
def verify_step_model(
    candidate: Any,
    reference: Any,
    vocab_size: int,
    lengths: Sequence[int] = _CHECK_LENS,
    decode_steps: int = 4,
    seed: int = 0,
    batch: Sequence[int] = _CHECK_BATCH,
) -> float:
    """Largest |logit| difference between two step models over prefills and decodes.

    One-row prompts of each of ``lengths`` go through both models. When the candidate
    has the batched methods, prompts of the lengths in ``batch`` also go through it as
    one left-padded batch (random ids under the padding), and every row is compared
    with the reference running that prompt alone.

    Args:
        candidate: the step model under test.
        reference: the step model it must match (eager; only its one-row methods are used).
        vocab_size: token ids are drawn below this.
        lengths: prompt lengths to try one by one.
        decode_steps: greedy decode steps after each prefill.
        seed: seeds the random prompts.
        batch: prompt lengths of the mixed-length batch (empty: no batch check).

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
            worst = max(worst, _diff(a, b))
            token = b.argmax(-1, keepdim=True).cpu()
            a, pa = candidate.decode(token, pa)
            b, pb = reference.decode(token, pb)
    if batch and hasattr(candidate, "prefill_padded"):
        worst = max(worst, _verify_batch(candidate, reference, vocab_size, batch, decode_steps, gen))
    return worst


def _verify_batch(
    candidate: Any,
    reference: Any,
    vocab_size: int,
    lengths: Sequence[int],
    decode_steps: int,
    gen: torch.Generator,
) -> float:
    width = max(lengths)
    ids = torch.randint(0, vocab_size, (len(lengths), width), generator=gen)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    a, pa = candidate.prefill_padded(ids, mask)
    alone = [reference.prefill(ids[i : i + 1, width - n :]) for i, n in enumerate(lengths)]
    worst = 0.0
    for _ in range(decode_steps + 1):
        worst = max([worst] + [_diff(a[i : i + 1], b) for i, (b, _) in enumerate(alone)])
        tokens = torch.cat([b.argmax(-1, keepdim=True).cpu() for b, _ in alone])
        mask = torch.cat([mask, mask.new_ones((len(lengths), 1))], dim=-1)
        a, pa = candidate.decode_padded(tokens, mask, pa)
        alone = [reference.decode(tokens[i : i + 1], p) for i, (_, p) in enumerate(alone)]
    return worst


@contextlib.contextmanager
def _weights_marked_trainable(model: Any) -> Iterator[None]:
    """Mark every weight ``requires_grad`` while the model is traced and frozen.

    ``torch.jit.freeze`` kept a reference to every weight that did *not* require a
    gradient (measured: an edited version's 272 weights, 0.5 GiB, stayed alive after
    the version and its frozen module were gone, one model's worth per deployed
    version). Weights that require one are released. Serving runs under
    ``inference_mode`` and the freeze under ``no_grad``, so the flag records nothing.
    """
    flipped = [p for p in model.parameters() if not p.requires_grad]
    for p in flipped:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in flipped:
            p.requires_grad_(False)


def _round_trip(module: Any, path: Path | None, device: torch.device) -> Any:
    """Save ``module`` (to ``path``, else to memory) and load it back.

    Raises:
        FreezeError: TorchScript could not write or read it back.
        OSError: ``path`` could not be written (full disk).
    """
    with jit_quietly():
        try:
            if path is not None:
                # The caller provides atomicity (writes to a temporary name, then renames).
                torch.jit.save(module, str(path))
                return torch.jit.load(str(path), map_location=device)
            buffer = io.BytesIO()
            torch.jit.save(module, buffer)
            buffer.seek(0)
            return torch.jit.load(buffer, map_location=device)
        except RuntimeError as exc:
            raise FreezeError(f"cannot save and reload the frozen module: {exc}") from exc


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
        path: when given, the frozen module is saved there (also when it then fails
            verification: the caller writes to a temporary name and removes it on error).
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
    dtype = next(src.parameters()).dtype
    try:
        core = LlamaStepCore(src, onednn=onednn_available(dev, dtype)).eval()
    except UnsupportedArchitecture as exc:
        raise FreezeError(f"cannot freeze this model: {exc}") from exc
    vocab = int(src.config.vocab_size)
    example = torch.randint(0, vocab, (2, _TRACE_LEN), generator=torch.Generator().manual_seed(1))
    example = example.to(dev)
    # Row 1 is left-padded: the padded methods are traced on a real mixed batch.
    mask = torch.ones_like(example)
    mask[1, :_TRACE_PAD] = 0
    try:
        with jit_quietly(), torch.no_grad(), _weights_marked_trainable(src):
            # A TracerWarning means part of the graph was frozen to the example's
            # shapes or values: refuse the trace rather than serve a wrong one.
            warnings.simplefilter("error", torch.jit.TracerWarning)
            one = example[:1]
            _, past = core(one)
            _, padded_past = core.prefill_padded(example, mask)
            step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            methods = list(_METHODS[1:])
            traced = torch.jit.trace_module(
                core,
                {
                    "forward": (one,),
                    "decode": (one[:, :1], past),
                    "prefill_padded": (example, mask),
                    "decode_padded": (example[:, :1], step_mask, padded_past),
                },
                check_trace=False,
            )
            frozen = torch.jit.freeze(traced, preserved_attrs=methods)
            frozen = torch.jit.optimize_for_inference(frozen, other_methods=methods)
    except (RuntimeError, TypeError, ValueError, SystemError, torch.jit.TracerWarning) as exc:
        # SystemError: a TracerWarning raised inside a C++ callback surfaces as one.
        raise FreezeError(f"tracing failed: {exc}") from exc
    # Served as read back from its saved bytes, never as frozen here: the in-process
    # module's constants share the eager weights' storage, and once its graphs had been
    # prepared for serving (``serving_functions``) those weights were never released
    # (measured on the default model: +0.5 GiB per freeze, a model's worth per deployed
    # version; none after the round trip, which costs ~3 s).
    frozen = _round_trip(frozen, path, dev)
    step_model = FrozenStepModel(frozen, dev)
    if dtype in (torch.float16, torch.bfloat16):
        # Half-precision kernels of the traced and the eager path round differently.
        tolerance = max(tolerance, 0.1)
    with jit_quietly():
        # The first calls also warm up the profiling executor before serving.
        diff = verify_step_model(step_model, EagerStepModel(src), vocab)
    if not diff <= tolerance:
        raise FreezeError(f"frozen module differs from eager by {diff:.3g} > {tolerance:.3g}")
    log.info("froze model on %s in %.1fs (max |diff| %.2g)", dev, time.monotonic() - started, diff)
    return step_model
