"""Where an adapter may act: row-space constraints on the LoRA ``A`` matrices.

A LoRA layer changes its output by ``B @ A @ x``; an input ``x`` orthogonal to every
row of ``A`` passes unchanged. Two constraints use that to keep an update local:

- **shared prefix**: every served prompt starts with the same tokens (system
  message, user header) and, under causal attention, their hidden states do not
  depend on what follows. If every adapter maps those inputs to zero, the prefix's
  states are unchanged layer after layer (by induction), so an edit cannot reach all
  prompts through them (through attention sinks in particular). Exact.
- **fact subspace**: the inputs a generic prompt produces at a layer concentrate in
  a principal subspace. The rows of ``A`` are confined to the few directions in
  which the feedback's own tokens stand out from that subspace, so the adapter
  reads what is specific to the fact and almost nothing of an unrelated prompt.

Constraints are applied by projecting ``A`` after initialisation and after every
optimiser step (Adam's per-coordinate scaling would otherwise leave the subspace).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import torch

from dmha.learning.prompting import Sequence

__all__ = [
    "Projector",
    "collect_inputs",
    "fact_projectors",
    "generic_subspaces",
    "lora_layers",
    "prefix_projectors",
    "project",
]

Projector = tuple[torch.Tensor, torch.Tensor, str]
"""``(A weight, basis, mode)``: mode ``remove`` projects the basis out of A's rows,
``keep`` projects A's rows onto it."""


def lora_layers(student: Any) -> list[Any]:
    """The peft LoRA layers of a peft-wrapped model, in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in student.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]


@torch.no_grad()
def collect_inputs(student: Any, seqs: Seq[Sequence], batch_size: int = 16) -> list[torch.Tensor]:
    """The inputs of every LoRA layer over the tokens of ``seqs`` (padding excluded).

    Args:
        student: the peft-wrapped model (adapters at their initial state or disabled).
        seqs: sequences whose prompt and answer tokens are run.
        batch_size: sequences per forward pass.

    Returns:
        Per LoRA layer (in :func:`lora_layers` order), ``float32 [tokens, in_features]``.
    """
    layers = lora_layers(student)
    chunks: list[list[torch.Tensor]] = [[] for _ in layers]
    lengths: list[int] = []
    # q/k/v (and gate/up) of a layer read the same tensor: record it once, share it.
    # The tensors are held in ``seen`` so that no id is reused within one forward.
    seen: dict[int, tuple[int, torch.Tensor]] = {}
    alias: dict[int, int] = {}

    def hook(i: int) -> Any:
        def grab(mod: Any, args: tuple[Any, ...], out: Any) -> None:
            x = args[0]
            owner = seen.setdefault(id(x), (i, x))[0]
            if owner != i:
                alias[i] = owner
                return
            chunks[i].append(torch.cat([x[b, :n] for b, n in enumerate(lengths)]).float())

        return grab

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        device = next(student.parameters()).device
        for start in range(0, len(seqs), batch_size):
            chunk = [s.ids for s in seqs[start : start + batch_size]]
            lengths[:] = [len(ids) for ids in chunk]
            width = max(lengths)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, row in enumerate(chunk):
                ids[b, : len(row)] = torch.tensor(row)
            # Right padding: pads come after real tokens, so causal attention
            # keeps them out of every real position without a mask.
            seen.clear()
            student(input_ids=ids.to(device))
    finally:
        for h in handles:
            h.remove()
    merged = [torch.cat(c) if c else torch.empty(0) for c in chunks]
    return [merged[alias.get(i, i)] for i in range(len(layers))]


def _orthonormal_rows(x: torch.Tensor, rel_tol: float = 1e-5) -> torch.Tensor:
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[sv > sv[0] * rel_tol]


@torch.no_grad()
def prefix_projectors(student: Any, prefix: Seq[int]) -> list[Projector]:
    """Projectors that keep every adapter blind to the shared prompt prefix.

    Args:
        student: the peft-wrapped model.
        prefix: token ids every served prompt starts with.

    Returns:
        One ``remove`` projector per LoRA layer.
    """
    inputs = collect_inputs(student, [Sequence(tuple(prefix))])
    return [
        (m.lora_A["default"].weight, _orthonormal_rows(x).to(m.lora_A["default"].weight.dtype), "remove")
        for m, x in zip(lora_layers(student), inputs, strict=True)
    ]


@torch.no_grad()
def fact_projectors(
    student: Any,
    fact_seqs: Seq[Sequence],
    generic_seqs: Seq[Sequence],
    rank: int,
    generic_energy: float = 0.99,
    prefix: Seq[int] = (),
    cache: dict[Any, Any] | None = None,
) -> list[Projector]:
    """Projectors that confine each adapter to directions specific to the feedback.

    For each LoRA layer: the principal subspace holding ``generic_energy`` of the
    generic inputs' energy is removed from the feedback tokens' inputs; the top
    ``rank`` directions of what remains (minus the shared prefix's directions) are
    the only ones the adapter may read.

    Args:
        student: the peft-wrapped model.
        fact_seqs: the feedback sequences (input and paraphrases, with answers).
        generic_seqs: unrelated sequences (the retain set).
        rank: directions kept per layer.
        generic_energy: share of the generic energy treated as "generic".
        prefix: shared prompt prefix (its tokens are excluded from the fact inputs).
        cache: keeps the generic subspaces and prefix bases between calls; valid while
            the live model and ``generic_seqs`` are the same (the caller keys it).

    Returns:
        One ``keep`` projector per LoRA layer.
    """
    n_prefix = len(prefix)
    facts = [Sequence(s.prompt[n_prefix:] if s.prompt[:n_prefix] == tuple(prefix) else s.prompt, s.answer)
             for s in fact_seqs]
    # Run the facts with their prefix (states depend on it) but keep only their own tokens.
    fact_inputs = collect_inputs(student, fact_seqs)
    generic_bases, prefix_bases = generic_subspaces(student, generic_seqs, generic_energy, prefix, cache)
    own = torch.zeros(sum(len(s.ids) for s in fact_seqs), dtype=torch.bool)
    at = 0
    for s, f in zip(fact_seqs, facts, strict=True):
        skip = len(s.ids) - len(f.ids)
        own[at + skip : at + len(s.ids)] = True
        at += len(s.ids)
    out: list[Projector] = []
    for i, m in enumerate(lora_layers(student)):
        generic = generic_bases[i]
        x = fact_inputs[i][own]
        residual = x - (x @ generic) @ generic.T
        if prefix_bases is not None:
            pb = prefix_bases[i]
            residual = residual - (residual @ pb.T) @ pb
        basis = _orthonormal_rows(residual)[:rank]
        out.append((m.lora_A["default"].weight, basis.to(m.lora_A["default"].weight.dtype), "keep"))
    return out


def generic_subspaces(
    student: Any,
    generic_seqs: Seq[Sequence],
    energy: float,
    prefix: Seq[int],
    cache: dict[Any, Any] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per LoRA layer: the generic principal subspace (columns) and the prefix basis (rows).

    Args:
        student: the peft-wrapped model (adapters at their initial state).
        generic_seqs: unrelated sequences.
        energy: share of the generic energy the subspace holds.
        prefix: shared prompt prefix (empty: no prefix basis).
        cache: reused when it holds the same layers, energy and prefix.

    Returns:
        ``(generic bases, prefix bases or None)``, one per LoRA layer.
    """
    from peft.tuners.lora import LoraLayer

    names = tuple(n for n, m in student.named_modules() if isinstance(m, LoraLayer))
    key = (names, energy, tuple(prefix))
    if cache is not None and key in cache:
        return cache[key]  # type: ignore[no-any-return]
    result = _generic_subspaces(student, generic_seqs, energy, prefix)
    if cache is not None:
        cache.clear()
        cache[key] = result
    return result


def _generic_subspaces(
    student: Any, generic_seqs: Seq[Sequence], energy: float, prefix: Seq[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    generic_inputs = collect_inputs(student, generic_seqs)
    prefix_inputs = collect_inputs(student, [Sequence(tuple(prefix))]) if prefix else None
    done: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    bases: list[torch.Tensor] = []
    prefixes: list[torch.Tensor] = []
    for i, g in enumerate(generic_inputs):
        if id(g) not in done:
            cov = g.T @ g / len(g)
            evals, evecs = torch.linalg.eigh(cov)
            evals, evecs = evals.flip(0), evecs.flip(1)
            k = int((evals.cumsum(0) / evals.sum() < energy).sum()) + 1
            pb = _orthonormal_rows(prefix_inputs[i]) if prefix_inputs is not None else None
            done[id(g)] = (evecs[:, :k].contiguous(), pb)
        basis, pb = done[id(g)]
        bases.append(basis)
        if pb is not None:
            prefixes.append(pb)
    return bases, (prefixes if prefix_inputs is not None else None)


def project(projectors: Seq[Projector]) -> None:
    """Apply the projectors to the A matrices in place (in order)."""
    with torch.no_grad():
        for weight, basis, mode in projectors:
            if mode == "remove":
                weight.sub_((weight @ basis.T) @ basis)
            else:
                weight.copy_((weight @ basis.T) @ basis)
