"""Which retain prompts an edit would move most: the ones its locality term holds still.

An edit reads only its directions ``u`` (inside the layer's editable basis ``U``); a
retain prompt whose ``down_proj`` keys put much energy into them is one the edit could
change (a question about another country's capital, for a made-up country's capital).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from dmha.learning.nullspace import collect_keys
from dmha.learning.prompting import Sequence

__all__ = ["RetainExposure", "expose", "most_exposed", "most_exposed_known", "shares_in"]


@dataclass(frozen=True)
class RetainExposure:
    """The retain sequences' ``down_proj`` keys of one live version, kept small.

    Which retain prompts an edit would move most (:func:`most_exposed`) depends on the
    edit's directions, which lie in the layer's basis ``U``; the keys themselves depend
    only on the live version. So they are collected once per version (seconds of
    forward passes over every retain prompt, formerly in every job) and kept as their
    coordinates ``K U`` and squared norms.

    Attributes:
        seqs: the retain sequences, in order.
        lengths: tokens of each sequence counted (its shared prefix left out).
        coords: layer -> ``[tokens, k]`` keys in the basis.
        energy: layer -> ``[tokens]`` squared key norms.
    """

    seqs: tuple[Sequence, ...]
    lengths: tuple[int, ...]
    coords: dict[int, torch.Tensor]
    energy: dict[int, torch.Tensor]


def expose(model: Any, seqs: Seq[Sequence], space_bases: Mapping[int, torch.Tensor], skip: int) -> RetainExposure:
    """Collect ``seqs``' keys under ``model`` as coordinates in the space's bases.

    Args:
        model: the live model.
        seqs: the sequences (retain prompts, or accepted feedback).
        space_bases: layer -> the space's orthonormal basis ``U``.
        skip: leading tokens every sequence shares (left out).

    Returns:
        The exposure.
    """
    layers = list(space_bases)
    keys = collect_keys(model, list(seqs), layers, skip=skip)
    return RetainExposure(
        tuple(seqs),
        tuple(len(s.ids) - skip for s in seqs),
        {i: keys[i] @ space_bases[i] for i in layers},
        {i: keys[i].pow(2).sum(-1) for i in layers},
    )


def shares_in(
    exposure: RetainExposure, space_bases: Mapping[int, torch.Tensor], layer: int, u: torch.Tensor
) -> torch.Tensor:
    """Each token's share of key energy in the directions ``u`` (inside the space's basis)."""
    inside = (exposure.coords[layer] @ (space_bases[layer].T @ u)).square().sum(-1)
    return inside / exposure.energy[layer].clamp(min=1e-12)


def most_exposed(
    model: Any, retain: list[Sequence], bases: Mapping[int, torch.Tensor], k: int, skip: int
) -> list[Sequence]:
    """The ``k`` retain sequences whose keys put the most energy into ``bases``."""
    keys = collect_keys(model, retain, list(bases), skip=skip)
    shares = {
        layer: (keys[layer] @ u).pow(2).sum(-1) / keys[layer].pow(2).sum(-1).clamp(min=1e-12)
        for layer, u in bases.items()
    }
    return _top_by_share(retain, [len(s.ids) - skip for s in retain], shares, k)


def most_exposed_known(
    exposure: RetainExposure, space_bases: Mapping[int, torch.Tensor], bases: Mapping[int, torch.Tensor], k: int
) -> list[Sequence]:
    """:func:`most_exposed` from keys collected with the space: the edit's directions
    lie in the space's basis ``U``, so ``K u = (K U)(Uᵀ u)`` exactly."""
    shares = {layer: shares_in(exposure, space_bases, layer, u) for layer, u in bases.items()}
    return _top_by_share(list(exposure.seqs), list(exposure.lengths), shares, k)


def _top_by_share(
    retain: list[Sequence], lengths: list[int], shares: Mapping[int, torch.Tensor], k: int
) -> list[Sequence]:
    """The ``k`` sequences with the largest per-token share, summed over layers."""
    score = torch.zeros(len(retain))
    for share in shares.values():
        score += torch.stack([part.max() for part in share.split(lengths)])
    return [retain[i] for i in score.argsort(descending=True)[:k].tolist()]
