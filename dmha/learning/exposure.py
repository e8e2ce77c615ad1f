"""Which retain prompts an edit would move most: the ones its locality term holds still.

An edit reads only its directions ``u`` (inside the layer's editable basis ``U``); a
retain prompt whose ``down_proj`` keys put much energy into them is one the edit could
change (a question about another country's capital, for a made-up country's capital).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dmha.learning.nullspace import collect_keys
from dmha.learning.prompting import Sequence

__all__ = ["RetainExposure", "most_exposed", "most_exposed_known"]


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
    shares = {
        layer: (exposure.coords[layer] @ (space_bases[layer].T @ u)).pow(2).sum(-1)
        / exposure.energy[layer].clamp(min=1e-12)
        for layer, u in bases.items()
    }
    return _top_by_share(list(exposure.seqs), list(exposure.lengths), shares, k)


def _top_by_share(
    retain: list[Sequence], lengths: list[int], shares: Mapping[int, torch.Tensor], k: int
) -> list[Sequence]:
    """The ``k`` sequences with the largest per-token share, summed over layers."""
    score = torch.zeros(len(retain))
    for share in shares.values():
        score += torch.stack([part.max() for part in share.split(lengths)])
    return [retain[i] for i in score.argsort(descending=True)[:k].tolist()]
