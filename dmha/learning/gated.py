"""Key-gated edits: a change of ``down_proj`` that acts only on tokens whose key is the fact's.

A merged edit (``W_base + D``) moves every token a little, however small ``D`` is kept:
greedy text that sits on a near-tie flips somewhere (measured through chat: the same
20 unrelated questions were answered word for word the same 55 % of the time after 10
merged edits, 30 % after 30). A gated edit instead keeps the base weight and adds,
per token,

    ΔW_e x   only where   ‖U_eᵀ x‖² ≥ τ_e ‖x‖²

(``U_e``: the ``k`` directions the edit reads, along which the fact's keys stand out
from generic ones, see :func:`~dmha.learning.editor._fact_directions`; ``τ_e``: a
margin times the largest share of key energy any token of the training retain
prompts has in them). A token whose key does not match adds exactly zero, so its
output is bitwise the base's: unrelated answers cannot move. The idea is WISE's and
MELO's (route by key, edit a side memory); the routing here reuses the edit's own
reading subspace, so there is no separate key to learn or store.

Every edit of a layer is stacked into one :class:`GatedEdits` module (written with
comparisons and matmuls only, so it traces and freezes like the rest of the model).
A version stores them in its delta file beside any dense entries, under
``model.layers.<i>.mlp.down_proj.gated.<field>``; the fields are cumulative, like
the dense deltas, and a new edit appends its block (:func:`append_edit`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dmha.errors import LearningError

__all__ = [
    "GatedEdits",
    "append_edit",
    "compact_write",
    "dense_names",
    "effective_deltas",
    "gate_thresholds",
    "gated_layers",
    "install_gated",
    "opens",
    "token_shares",
]

log = logging.getLogger(__name__)

_FIELDS = ("gate", "gate_map", "thresholds", "a", "rank_map", "b")
_MARK = ".gated."


def _prefix(layer: int) -> str:
    return f"model.layers.{layer}.mlp.down_proj{_MARK}"


def _weight(prefix: str) -> str:
    return prefix[: -len(_MARK)] + ".weight"


class GatedEdits(nn.Module):
    """``base(x)`` plus every gated edit of one layer whose key matches ``x``.

    Shapes (``d_in``/``d_out``: the base's; ``E`` edits, ``G`` gate directions and
    ``R`` rank components in all):

    - ``gate [d_in, G]``: the directions each edit reads (orthonormal per edit);
    - ``gate_map [G, E]``: which edit each gate direction belongs to (0/1);
    - ``thresholds [E]``: the share of a token's key energy an edit needs to act;
    - ``a [R, d_in]``, ``b [d_out, R]``: the edits' factors, ``ΔW_e = b_e a_e``;
    - ``rank_map [E, R]``: which edit each rank component belongs to (0/1);
    - ``write [d_out, G]`` (derived, not stored): the edits' changes per gate
      coordinate, served instead of ``a`` and ``b`` when every edit reads only its
      gate (:func:`compact_write`).

    Args:
        base: the layer's linear map (dense edits already in its weight).
        fields: the six tensors above, by name.
    """

    gate: torch.Tensor
    gate_map: torch.Tensor
    thresholds: torch.Tensor
    a: torch.Tensor
    rank_map: torch.Tensor
    b: torch.Tensor
    write: torch.Tensor

    def __init__(self, base: nn.Module, fields: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        device = next(base.parameters()).device
        for name in _FIELDS:
            # float32 whatever the served dtype: a gated change is small and must not
            # be rounded away in half precision.
            self.register_buffer(name, fields[name].detach().float().to(device).contiguous())
        write = compact_write(self.gate, self.gate_map, self.a, self.rank_map, self.b)
        self.compact = write is not None
        """Whether :attr:`write` replaces ``a`` and ``b`` in :meth:`change` (see :func:`compact_write`)."""
        # Derived from the fields at every install, so not part of the state.
        self.register_buffer("write", write if write is not None else torch.zeros(0, device=device), persistent=False)

    @property
    def in_features(self) -> int:
        """The base's input width."""
        return int(self.a.shape[1])

    @property
    def out_features(self) -> int:
        """The base's output width."""
        return int(self.b.shape[0])

    @property
    def edits(self) -> int:
        """How many edits the module holds."""
        return int(self.thresholds.shape[0])

    def change(self, x: torch.Tensor) -> torch.Tensor:
        """The gated edits' contribution for inputs ``x`` (zero where no key matches)."""
        # In float32 also when the module was converted (an edit's bfloat16 training
        # copy of a live version that holds gated edits): no-ops on float32 buffers.
        xf = x.float()
        gate_map = self.gate_map.float()
        read = xf @ self.gate.float()
        on = opens(read.square() @ gate_map, xf, self.thresholds.float()).float()
        if self.compact:
            return ((read * (on @ gate_map.T)) @ self.write.float().T).to(x.dtype)
        h = (xf @ self.a.float().T) * (on @ self.rank_map.float())
        return (h @ self.b.float().T).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base output plus the matching edits' change."""
        return self.base(x) + self.change(x)


def compact_write(
    gate: torch.Tensor, gate_map: torch.Tensor, a: torch.Tensor, rank_map: torch.Tensor, b: torch.Tensor
) -> torch.Tensor | None:
    """Every edit's change as one map from its gate's coordinates: ``write [d_out, G]``.

    An edit trained by the editor reads only its gate's directions (``a_e = a_e U_e U_eᵀ``,
    see :meth:`~dmha.learning.adapters.NullSpaceDelta.gated_factors`), so its change
    ``b_e a_e x`` equals ``(b_e a_e U_e)(U_eᵀ x)``: the gate's projection, computed anyway
    to decide where the edit acts, is all it needs. Serving then skips the ``[R, d_in]``
    read matrix, which is the largest part of the per-token cost once edits pile up
    (measured at 200 edits of rank 8: 3.5 ms against 0.1 ms for the layer itself).

    Args:
        gate, gate_map, a, rank_map, b: a layer's stacked edits (:class:`GatedEdits`).

    Returns:
        ``write`` with column ``g`` the change per unit of gate coordinate ``g``, or None
        when some edit reads outside its gate (then the general form is used).
    """
    write = torch.zeros(b.shape[0], gate.shape[1], dtype=torch.float32, device=b.device)
    for e in range(gate_map.shape[1]):
        cols = gate_map[:, e].nonzero().flatten()
        rows = rank_map[e].nonzero().flatten()
        u, a_e = gate[:, cols].float(), a[rows].float()
        coords = a_e @ u
        if float((a_e - coords @ u.T).norm()) > 1e-4 * max(float(a_e.norm()), 1e-30):
            return None
        write[:, cols] = b[:, rows].float() @ coords
    return write


def opens(energy: torch.Tensor, x: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """The gate rule, one definition for training and serving: ``energy ≥ τ ‖x‖²`` per token.

    Args:
        energy: ``[..., E]`` (or ``[..., 1]``) key energy inside each edit's directions.
        x: ``[..., d_in]`` the keys (float32).
        thresholds: ``τ`` per edit (or one).

    Returns:
        Boolean ``[..., E]``: where each edit acts.
    """
    return energy >= thresholds * x.square().sum(-1, keepdim=True)


def gated_layers(delta: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The gated entries of a delta, by the weight name of the layer they wrap."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in delta.items():
        if _MARK in name:
            prefix, field = name.rsplit(".", 1)
            out.setdefault(_weight(prefix + "."), {})[field] = tensor
    return out


def dense_names(delta: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the delta's dense entries (base weights the delta adds to), sorted."""
    return sorted(n for n in delta if _MARK not in n)


def install_gated(model: Any, delta: Mapping[str, torch.Tensor]) -> None:
    """Put each layer's gated edits in front of its ``down_proj`` (replacing earlier ones).

    A layer the delta has no gated entries for keeps (or gets back) its plain linear.

    Args:
        model: a Hugging Face causal LM (modified in place).
        delta: a version's cumulative delta.

    Raises:
        KeyError: a gated entry is incomplete or names a module the model lacks.
    """
    layers = gated_layers(delta)
    for name, module in list(model.named_modules()):
        if isinstance(module, GatedEdits) and f"{name}.weight" not in layers:
            _set(model, name, module.base)
    for weight, fields in layers.items():
        path = weight[: -len(".weight")]
        missing = [f for f in _FIELDS if f not in fields]
        if missing:
            raise KeyError(f"gated edits of {path} lack {missing}")
        current = model.get_submodule(path)
        base = current.base if isinstance(current, GatedEdits) else current
        _set(model, path, GatedEdits(base, fields))


def _set(model: Any, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def append_edit(
    delta: dict[str, torch.Tensor],
    layer: int,
    gate: torch.Tensor,
    threshold: float,
    a: torch.Tensor,
    b: torch.Tensor,
) -> None:
    """Add one edit's block to ``delta``'s gated entries of ``layer`` (in place).

    Args:
        delta: a cumulative delta.
        layer: decoder layer.
        gate: ``[d_in, k]`` the directions the edit reads (its gate).
        threshold: the key-energy share it needs to act.
        a: ``[r, d_in]`` its read factor.
        b: ``[d_out, r]`` its write factor (any scale folded in).
    """
    p = _prefix(layer)
    old = {f: delta.get(p + f) for f in _FIELDS}
    k, r = gate.shape[1], a.shape[0]
    e0 = 0 if old["thresholds"] is None else int(old["thresholds"].shape[0])
    g0 = 0 if old["gate"] is None else int(old["gate"].shape[1])
    r0 = 0 if old["a"] is None else int(old["a"].shape[0])
    gate_map = torch.zeros(g0 + k, e0 + 1)
    rank_map = torch.zeros(e0 + 1, r0 + r)
    if e0 and old["gate_map"] is not None and old["rank_map"] is not None:
        gate_map[:g0, :e0] = old["gate_map"]
        rank_map[:e0, :r0] = old["rank_map"]
    gate_map[g0:, e0] = 1.0
    rank_map[e0, r0:] = 1.0

    def cat(name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
        prev = old[name]
        new = new.detach().float().cpu()
        return new.contiguous() if prev is None else torch.cat([prev.float(), new], dim).contiguous()

    delta[p + "gate"] = cat("gate", gate, 1)
    delta[p + "thresholds"] = cat("thresholds", torch.tensor([float(threshold)]), 0)
    delta[p + "a"] = cat("a", a, 0)
    delta[p + "b"] = cat("b", b, 1)
    delta[p + "gate_map"] = gate_map
    delta[p + "rank_map"] = rank_map


def effective_deltas(delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per base weight: its dense delta plus every gated edit's ``b a``, as if always on.

    What a change to a module amounts to when its size is reported; not what any
    token computes (a gated edit acts only where its key matches).
    """
    out = {n: delta[n].float() for n in dense_names(delta)}
    for weight, fields in gated_layers(delta).items():
        full = fields["b"].float() @ fields["a"].float()
        out[weight] = out[weight] + full if weight in out else full
    return out


def token_shares(keys: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Each key's share of energy in the span of ``gate``'s orthonormal columns: ``[tokens]``."""
    k = keys.float()
    return (k @ gate.float()).square().sum(-1) / k.square().sum(-1).clamp(min=1e-12)


def gate_thresholds(
    generic_max: Mapping[int, float],
    fact: Mapping[int, torch.Tensor],
    bases: Mapping[int, torch.Tensor],
    margin: float,
    floors: Mapping[int, float] | None = None,
) -> dict[int, float]:
    """Per layer, the key share a gated edit needs: ``margin`` × the largest generic token's.

    Layers where no token of the fact reaches it are left out (the edit would never
    act there). When no layer is left, the margin halfway to 1 is tried: still above
    every generic token, with less headroom on unseen text, and far more local than
    the merged edit a refusal leads to (a generic relation, "the language spoken in
    <X>", measured refused at 1.5 and gated in 3 layers at 1.25 with all 100 probes
    word for word, BENCHMARKS.md). The edit is refused when that leaves none either.

    Args:
        generic_max: layer -> the largest share of a generic token's key energy in
            the edit's directions (retain prompts and their answers).
        fact: layer -> the fact's keys.
        bases: layer -> the directions the edit reads.
        margin: how far above generic text a token must stand.
        floors: layer -> a threshold the gate needs at least, whatever the margin
            (above the tokens of earlier feedback, which the gate must not open on).

    Returns:
        layer -> threshold, for the layers where the fact's keys reach it.

    Raises:
        LearningError: no token of the fact stands out from generic text by the
            lower margin either.
    """
    tops = {
        layer: float(token_shares(fact[layer], u).max())
        for layer, u in bases.items()
        if u.shape[1] and len(fact[layer]) and layer in generic_max
    }
    rungs = [margin, 1.0 + (margin - 1.0) / 2] if margin > 1.0 else [margin]
    for rung in rungs:
        # (Above 1 no token can reach a threshold: the layer drops out.)
        taus = {layer: max(rung * generic_max[layer], (floors or {}).get(layer, 0.0)) for layer in tops}
        out = {layer: tau for layer, tau in taus.items() if 0 < tau <= tops[layer]}
        if out:
            if rung != margin:
                log.info("no token of the feedback stands out by %gx: gated at %gx", margin, rung)
            return out
    raise LearningError(
        f"no token of the feedback stands out from generic text by {rungs[-1]:g}x (and above the "
        "feedback learned before) in the edit's directions: a gated edit could not tell it apart"
    )
