"""The preserved-key statistics of a model and the null space an edit may write through.

An edit changes ``mlp.down_proj`` of a few middle layers by ``ΔW``. For any input key
``k`` (the ``down_proj`` input at one token) the layer's output moves by ``ΔW k``, so
an edit whose rows read only directions that ordinary tokens do not use leaves
ordinary prompts (almost) unchanged. Following AlphaEdit (arXiv 2410.02355):

- ``C0 = K0 K0ᵀ / N`` is the second moment of the keys over the preserved corpus
  (:mod:`dmha.learning.corpus`, rendered as served, answered by the model itself;
  the shared system prefix counted once, so it does not dominate), accumulated in
  float64 once per base model and cached on disk;
- the editable subspace is spanned by the eigenvectors of ``C0`` whose eigenvalue is
  at most ``rel_threshold · λmax``. The threshold is relative because key scales
  differ by orders of magnitude across layers (a few massive-activation coordinates
  hold most of the energy, so an energy-share cut would not be a null space).

Accepted edits add their own keys to the preserved statistics
(:meth:`KeyStats.with_keys`), so a later edit cannot overwrite an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmha.learning.prompting import Sequence

__all__ = ["KeyStats", "collect_keys", "down_proj", "null_basis", "read_cache"]

log = logging.getLogger(__name__)

_FORMAT = 1


def down_proj(model: Any, layer: int) -> Any:
    """The ``mlp.down_proj`` linear module of decoder layer ``layer``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers[layer].mlp.down_proj


class _KeysCollected(Exception):
    """Raised inside the forward pass once the last requested layer's keys are in."""


@torch.no_grad()
def collect_keys(
    model: Any,
    seqs: Seq[Sequence],
    layers: Iterable[int],
    skip: int = 0,
    batch_size: int = 16,
    sink: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[int, torch.Tensor]:
    """The ``down_proj`` inputs of ``layers`` over every token of ``seqs``.

    Args:
        model: the causal LM.
        seqs: sequences run whole (prompt and answer).
        layers: decoder layer indices.
        skip: leading tokens of every sequence left out of the result (a shared
            prefix whose keys are counted elsewhere).
        batch_size: sequences per forward pass.
        sink: when given, called with ``(layer, float32 [tokens, d_ff])`` per batch
            and nothing is kept (for corpora too large to hold).

    Returns:
        Per layer ``float32 [tokens, d_ff]`` (empty tensors when ``sink`` is given).
    """
    layers = list(layers)
    kept: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    lengths: list[int] = []

    # The model may be the one being served: the hooks must ignore every forward
    # pass but this thread's (a chat decoding at the same time runs in another).
    owner = threading.get_ident()

    def hook(i: int) -> Any:
        def grab(mod: Any, args: tuple[Any, ...]) -> None:
            if threading.get_ident() != owner:
                return
            x = args[0]
            rows = torch.cat([x[b, skip:n] for b, n in enumerate(lengths)]).float()
            if sink is not None:
                sink(i, rows)
            else:
                kept[i].append(rows)

        return grab

    handles = [down_proj(model, i).register_forward_pre_hook(hook(i)) for i in layers]
    if layers:
        # Nothing after the last key is needed: stop the forward pass there (the
        # later layers and the vocabulary projection are most of its cost).
        last = max(layers)

        def stop(mod: Any, args: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() == owner:
                raise _KeysCollected

        handles.append(down_proj(model, last).register_forward_hook(stop))
    try:
        device = next(model.parameters()).device
        for start in range(0, len(seqs), batch_size):
            chunk = [s.ids for s in seqs[start : start + batch_size]]
            lengths[:] = [len(ids) for ids in chunk]
            ids = torch.zeros((len(chunk), max(lengths)), dtype=torch.long)
            for b, row in enumerate(chunk):
                ids[b, : len(row)] = torch.tensor(row)
            # Right padding: causal attention keeps pads out of every real position.
            with contextlib.suppress(_KeysCollected):
                model(input_ids=ids.to(device))
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v) if v else torch.empty(0) for i, v in kept.items()}


def null_basis(cov: torch.Tensor, rel_threshold: float) -> torch.Tensor:
    """Orthonormal basis of the directions ``cov`` (nearly) never uses.

    Args:
        cov: ``[d, d]`` symmetric positive semi-definite second moment.
        rel_threshold: eigenvalues ``<= rel_threshold · λmax`` count as null.

    Returns:
        ``float32 [d, k]`` columns (k may be 0).
    """
    evals, evecs = torch.linalg.eigh(cov.double())
    keep = evals <= rel_threshold * evals.max().clamp(min=1e-30)
    return evecs[:, keep].float().contiguous()


@dataclass(frozen=True)
class KeyStats:
    """Per layer, the preserved keys' second moment ``K Kᵀ`` and how many keys it sums.

    Attributes:
        sums: layer -> ``float64 [d_ff, d_ff]`` sum of ``k kᵀ``.
        counts: layer -> number of keys summed.
    """

    sums: dict[int, torch.Tensor]
    counts: dict[int, int]
    _bases: dict[tuple[int, float], torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    """Memo of :meth:`basis`: one eigendecomposition per layer and threshold (~1 s each
    on CPU) per statistics object, i.e. per live version, not per edit."""

    @classmethod
    def compute(
        cls,
        model: Any,
        prefix: Seq[int],
        seqs: Seq[Sequence],
        layers: Iterable[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> KeyStats:
        """Accumulate the keys of ``prefix`` once and of every sequence after it.

        Args:
            model: the base model.
            prefix: token ids every sequence starts with (system message, header).
            seqs: the preserved corpus, each starting with ``prefix``.
            layers: decoder layers to cover.
            should_stop: polled per batch; True aborts with :class:`InterruptedError`.

        Returns:
            The statistics.
        """
        layers = list(layers)
        sums = {i: torch.zeros(0, dtype=torch.float64) for i in layers}
        counts = dict.fromkeys(layers, 0)

        def add(i: int, rows: torch.Tensor) -> None:
            if should_stop is not None and should_stop():
                raise InterruptedError("key statistics stopped")
            # One batch's sum in float32 (a float64 product costs ~2x on CPU), the
            # running total in float64 so that 30k+ keys add up without drift.
            part = (rows.T @ rows).double()
            sums[i] = sums[i] + part if sums[i].numel() else part
            counts[i] += len(rows)

        if prefix:
            collect_keys(model, [Sequence(tuple(prefix))], layers, sink=add)
        collect_keys(model, seqs, layers, skip=len(prefix), sink=add)
        return cls(sums, counts)

    def with_keys(self, keys: dict[int, torch.Tensor], weight: float = 1.0) -> KeyStats:
        """A copy that also preserves ``keys`` (an accepted edit's own keys).

        Args:
            keys: layer -> ``[n, d_ff]`` keys; layers not covered are ignored.
            weight: how much each key counts relative to a corpus key.

        Returns:
            The new statistics (this one is unchanged).
        """
        sums = dict(self.sums)
        counts = dict(self.counts)
        for i, k in keys.items():
            if i in sums and len(k):
                kd = k.double()
                sums[i] = sums[i] + weight * (kd.T @ kd)
                counts[i] += len(k)
        return KeyStats(sums, counts)

    def covariance(self, layer: int) -> torch.Tensor:
        """``C0 = K Kᵀ / N`` of ``layer`` (float64)."""
        return self.sums[layer] / max(1, self.counts[layer])

    def basis(self, layer: int, rel_threshold: float) -> torch.Tensor:
        """The editable (null) subspace of ``layer``; see :func:`null_basis` (memoised)."""
        key = (layer, float(rel_threshold))
        found = self._bases.get(key)
        if found is None:
            found = self._bases[key] = null_basis(self.covariance(layer), rel_threshold)
        return found

    # ------------------------------------------------------------- persistence

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write atomically (temp file + rename).

        Args:
            path: the file.
            extra: more plain data stored in the same file (read back by :func:`read_cache`).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            torch.save({**(extra or {}), "format": _FORMAT, "sums": self.sums, "counts": self.counts}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_cache(cls, data: dict[str, Any] | None, layers: Iterable[int]) -> KeyStats | None:
        """The statistics in a :func:`read_cache` result; None when absent or not covering ``layers``."""
        if data is None:
            return None
        sums, counts = data.get("sums", {}), data.get("counts", {})
        if not set(layers) <= set(sums):
            return None
        return cls({int(k): v for k, v in sums.items()}, {int(k): int(v) for k, v in counts.items()})

    @classmethod
    def load(cls, path: Path, layers: Iterable[int]) -> KeyStats | None:
        """Read a cache written by :meth:`save`; None when absent, stale or unreadable."""
        return cls.from_cache(read_cache(path), layers)


def read_cache(path: Path) -> dict[str, Any] | None:
    """The contents of a file written by :meth:`KeyStats.save`; None when absent, stale or unreadable."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("key statistics cache %s unreadable (%s); recomputing", path, exc)
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    return data


def corpus_fingerprint(*parts: Any) -> str:
    """A short stable hash of what a cache depends on (prompts, template, layers)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
