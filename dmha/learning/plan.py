"""How one update is made: the knobs the causal meta-learner turns per job.

An :class:`UpdatePlan` is immutable and JSON-serialisable: it is stored with the job
and with the model version it produced, so every version records exactly how it was
trained and an update can be replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dmha.config import LearningConfig

__all__ = ["UpdatePlan"]


@dataclass(frozen=True)
class UpdatePlan:
    """Hyper-parameters of one knowledge edit (see :mod:`dmha.learning.editor`).

    Attributes:
        edit_layers: decoder layers whose ``mlp.down_proj`` the edit changes.
        rank: rank of the change per layer.
        scale: multiplies the change (with the learning rate, the update's size θ).
        learning_rate: AdamW learning rate.
        steps: most optimisation steps (the Submit -> live budget bounds them).
        lambda_causal: weight of ``KL(P(Y | do(T)) || P(Y | T))``.
        lambda_locality: weight of the KL to the pre-update model on the retain set.
        replay_size: earlier accepted feedback items the update replays (and the
            gate checks are still known).
        replay_per_step: of those, how many each optimisation step samples.
        paraphrases: training paraphrases per feedback item for the causal term.
        retain_per_step: retain prompts sampled per step for the locality term.
        seed: seeds the factors' initialisation and the retain sampling.
        stop_margin: stop once every target token (input and training paraphrases)
            leads its best rival by this many logits; 0 = run all steps.
        null_threshold: eigenvalues of the preserved keys' second moment at most this
            times the largest count as null (the edit may write through them).
        max_delta_norm: Frobenius bound on each layer's change; 0 = unbounded.
        min_key_share: refuse the edit when no token of the feedback has at least
            this share of its key energy in the editable subspace.
        subspace_rank: when > 0, the change reads only this many directions of the
            editable subspace: those along which the feedback's own keys are largest.
        causal_floor: the causal teacher's probability of each target token is raised
            to at least this (the rest of its distribution scaled down); 0 = the
            teacher as it is.
    """

    edit_layers: tuple[int, ...] = (4, 5, 6, 7, 8)
    rank: int = 8
    scale: float = 1.0
    learning_rate: float = 1e-2
    steps: int = 30
    lambda_causal: float = 0.5
    lambda_locality: float = 1.0
    replay_size: int = 8
    replay_per_step: int = 2
    paraphrases: int = 6
    retain_per_step: int = 4
    seed: int = 0
    stop_margin: float = 1.0
    null_threshold: float = 1e-2
    max_delta_norm: float = 0.0
    min_key_share: float = 0.05
    subspace_rank: int = 8
    causal_floor: float = 0.9
    gate_margin: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form notes from whoever made the plan (e.g. the meta-learner's reason);
    recorded with the version, never read by the editor."""

    def __post_init__(self) -> None:
        if not self.edit_layers:
            raise ValueError("edit_layers must name at least one layer")
        if self.rank < 1 or self.scale <= 0:
            raise ValueError("rank must be >= 1 and scale > 0")
        if self.learning_rate <= 0 or self.steps < 1:
            raise ValueError("learning_rate must be > 0 and steps >= 1")
        if min(self.lambda_causal, self.lambda_locality, self.stop_margin, self.max_delta_norm) < 0:
            raise ValueError("loss weights, stop_margin and max_delta_norm must be >= 0")
        if min(self.replay_size, self.replay_per_step, self.paraphrases, self.retain_per_step, self.subspace_rank) < 0:
            raise ValueError("replay_size, replay_per_step, paraphrases, retain_per_step, subspace_rank must be >= 0")
        if not 0 < self.null_threshold < 1:
            raise ValueError("null_threshold must be in (0, 1)")
        if not 0 <= self.min_key_share < 1:
            raise ValueError("min_key_share must be in [0, 1)")
        if not 0 <= self.causal_floor < 1:
            raise ValueError("causal_floor must be in [0, 1)")
        if self.gate_margin < 0:
            raise ValueError("gate_margin must be >= 0")
        # Lists from JSON or config become tuples so the plan stays hashable and frozen.
        object.__setattr__(self, "edit_layers", tuple(sorted({int(i) for i in self.edit_layers})))

    @classmethod
    def from_config(cls, cfg: LearningConfig, **changes: Any) -> UpdatePlan:
        """The default plan of a deployment.

        Args:
            cfg: the ``learning`` section of the config.
            **changes: fields to override (what the meta-learner decided).

        Returns:
            A validated plan.

        Raises:
            ValueError: a field is out of range.
        """
        plan = cls(
            edit_layers=tuple(cfg.edit_layers),
            rank=cfg.rank,
            scale=cfg.scale,
            learning_rate=cfg.learning_rate,
            steps=cfg.steps,
            lambda_causal=cfg.lambda_causal,
            lambda_locality=cfg.lambda_locality,
            replay_size=cfg.replay_size,
            replay_per_step=cfg.replay_per_step,
            paraphrases=cfg.paraphrases,
            retain_per_step=cfg.retain_per_step,
            seed=cfg.seed,
            stop_margin=cfg.stop_margin,
            null_threshold=cfg.null_threshold,
            max_delta_norm=cfg.max_delta_norm,
            min_key_share=cfg.min_key_share,
            subspace_rank=cfg.subspace_rank,
            causal_floor=cfg.causal_floor,
            gate_margin=cfg.gate_margin,
        )
        return replace(plan, **changes) if changes else plan

    def with_changes(self, **changes: Any) -> UpdatePlan:
        """A copy with some fields changed (validated again).

        Returns:
            The new plan.
        """
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        data = asdict(self)
        data["edit_layers"] = list(self.edit_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdatePlan:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ValueError: unknown keys or invalid values.
        """
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown UpdatePlan fields: {sorted(unknown)}")
        return cls(**data)
