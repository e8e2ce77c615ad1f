"""Which of the gate's probes a candidate can have changed, known before running it.

A candidate that differs from the live model only by key-gated edits
(:mod:`dmha.learning.gated`) computes, on a token where none of its gates opens,
``base(x) + 0``, exactly what the live model computes there (the live model's edits
are a subset of the candidate's). So if no gate of the candidate opens on any token
of a probe at the first gated layer, that layer's outputs are the live model's, the
next gated layer sees the live model's keys, and so on: the candidate's logits on
the probe are bitwise the live model's. Checking that needs only the live model's
keys at the edit layers, kept once per live version (:class:`ProbeKeys`), and a few
matrix products; the gate then runs the candidate on the probes it may have changed
and counts the others as identical (measured: most gated edits touch none of the
100 locality probes, whose forward pass was most of the gate's time).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from dmha.learning.gated import dense_names, gated_layers, opens
from dmha.learning.nullspace import collect_keys
from dmha.learning.prompting import Sequence

__all__ = ["ProbeKeys", "probe_keys", "untouched"]

# Keys are kept in half precision (they are many); a gate is treated as open from
# this much below its threshold, so that rounding can only make a probe count as
# changed (and be run), never the reverse.
_SLACK = 0.05


@dataclass(frozen=True)
class ProbeKeys:
    """A model's ``down_proj`` inputs on the probe sequences, per layer.

    Attributes:
        layers: the layers held.
        prefix: layer -> ``float16 [p, d_in]`` keys of the prefix every probe shares.
        rows: layer -> ``float16 [tokens, d_in]`` keys of every probe's other tokens,
            probe after probe.
        offsets: probe ``i`` owns ``rows[layer][offsets[i]:offsets[i + 1]]``.
    """

    layers: tuple[int, ...]
    prefix: dict[int, torch.Tensor]
    rows: dict[int, torch.Tensor]
    offsets: tuple[int, ...]

    def probe(self, layer: int, i: int) -> torch.Tensor:
        """Probe ``i``'s keys at ``layer`` (its tokens after the prefix)."""
        return self.rows[layer][self.offsets[i] : self.offsets[i + 1]]

    def replaced(self, indices: Seq[int], fresh: ProbeKeys) -> ProbeKeys:
        """These keys with probe ``indices[j]``'s taken from ``fresh``'s probe ``j``."""
        if not indices:
            return self
        at = {i: j for j, i in enumerate(indices)}
        n = len(self.offsets) - 1
        rows = {
            layer: torch.cat([fresh.probe(layer, at[i]) if i in at else self.probe(layer, i) for i in range(n)])
            for layer in self.layers
        }
        sizes = [
            fresh.offsets[at[i] + 1] - fresh.offsets[at[i]] if i in at else self.offsets[i + 1] - self.offsets[i]
            for i in range(n)
        ]
        return ProbeKeys(self.layers, self.prefix, rows, _offsets(sizes))


@torch.no_grad()
def probe_keys(
    model: Any, seqs: Seq[Sequence], layers: Seq[int], prefix_len: int, with_prefix: bool = True
) -> ProbeKeys:
    """The keys of ``seqs`` under ``model`` at ``layers``.

    Args:
        model: the causal LM.
        seqs: the probes, all starting with the same ``prefix_len`` tokens.
        layers: edit layers.
        prefix_len: the shared prefix (its keys are kept once).
        with_prefix: also take the prefix's keys (False: ``prefix`` is left empty,
            for probes whose prefix keys are already known).

    Returns:
        The keys (a forward pass up to the last layer: a third of the model's for the
        default edit layers, and no vocabulary projection).
    """
    layers = tuple(sorted(layers))
    prefix: dict[int, torch.Tensor] = {}
    if with_prefix and prefix_len and seqs:
        head = collect_keys(model, [Sequence(tuple(seqs[0].ids[:prefix_len]), ())], layers)
        prefix = {i: head[i].half() for i in layers}
    keys = collect_keys(model, seqs, layers, skip=prefix_len)
    rows = {i: keys[i].half() for i in layers}
    return ProbeKeys(layers, prefix, rows, _offsets([len(s.ids) - prefix_len for s in seqs]))


def _offsets(sizes: Seq[int]) -> tuple[int, ...]:
    out = [0]
    for n in sizes:
        out.append(out[-1] + int(n))
    return tuple(out)


def untouched(
    keys: ProbeKeys, candidate_delta: Mapping[str, torch.Tensor], live_delta: Mapping[str, torch.Tensor]
) -> list[bool] | None:
    """Per probe: whether the candidate provably answers it exactly as the live model does.

    Args:
        keys: the live model's keys on the probes.
        candidate_delta: the candidate's cumulative delta.
        live_delta: the live version's.

    Returns:
        One flag per probe, or None when nothing can be told (the candidate changes a
        dense weight, or gates a layer whose keys are not held).
    """
    dense = dense_names(candidate_delta)
    if dense != dense_names(live_delta) or any(not torch.equal(candidate_delta[n], live_delta[n]) for n in dense):
        return None
    layers = {int(name.split(".")[2]): fields for name, fields in gated_layers(candidate_delta).items()}
    if not set(layers) <= set(keys.layers):
        return None
    n = len(keys.offsets) - 1
    touched = torch.zeros(n, dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor(keys.offsets).diff())
    for layer, fields in layers.items():
        if layer in keys.prefix and _acts(fields, keys.prefix[layer]).any():
            return [False] * n  # the shared prefix opens a gate: every probe changed
        hit = _acts(fields, keys.rows[layer])
        touched[owner[hit]] = True
    return [not t for t in touched.tolist()]


def _acts(fields: Mapping[str, torch.Tensor], keys: torch.Tensor) -> torch.Tensor:
    """Rows of ``keys`` on which some edit of one layer's block may act (with the slack)."""
    if not len(keys):
        return torch.zeros(0, dtype=torch.bool)
    x = keys.float()
    energy = (x @ fields["gate"].float()).square() @ fields["gate_map"].float()
    # A key out of half precision's range is not judged: it counts as reached.
    return opens(energy, x, (1.0 - _SLACK) * fields["thresholds"].float()).any(-1) | ~torch.isfinite(x).all(-1)
