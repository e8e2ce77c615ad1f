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
    """Hyper-parameters of one LoRA update.

    Attributes:
        lora_rank: LoRA rank r.
        lora_alpha: LoRA alpha (the adapter is scaled by alpha / r).
        target_modules: names of the linear modules that adapt.
        layers: decoder layer indices that adapt; empty = every layer. Adapting only
            upper layers also makes a step cheaper (no backward below them).
        learning_rate: AdamW learning rate.
        steps: optimisation steps.
        lambda_causal: weight of ``KL(P(Y | do(T)) || P(Y | T))``.
        lambda_locality: weight of the KL to the pre-update model on the retain set.
        replay_size: earlier accepted feedback items replayed in every step.
        paraphrases: training paraphrases per feedback item for the causal term.
        retain_per_step: retain prompts sampled per step for the locality term.
        seed: seeds the adapter's initialisation and the retain sampling.
        protect_prefix: constrain the adapter to leave the shared prompt prefix
            (system message) unchanged; see :mod:`dmha.learning.trainer`.
        subspace_rank: when > 0, each adapter may only read this many input
            directions specific to the feedback (see :mod:`dmha.learning.subspace`).
        generic_energy: share of a layer's generic input energy that counts as generic.
        stop_margin: stop early once every target token (input and training
            paraphrases) leads its best rival by this many logits; 0 = run all steps.
    """

    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "gate_proj", "up_proj")
    layers: tuple[int, ...] = ()
    learning_rate: float = 3e-3
    steps: int = 20
    lambda_causal: float = 0.5
    lambda_locality: float = 0.0
    replay_size: int = 8
    paraphrases: int = 4
    retain_per_step: int = 0
    seed: int = 0
    protect_prefix: bool = True
    stop_margin: float = 0.0
    subspace_rank: int = 16
    generic_energy: float = 0.99
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form notes from whoever made the plan (e.g. the meta-learner's reason);
    recorded with the version, never read by the trainer."""

    def __post_init__(self) -> None:
        if self.lora_rank < 1 or self.lora_alpha < 1:
            raise ValueError("lora_rank and lora_alpha must be >= 1")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if self.learning_rate <= 0 or self.steps < 1:
            raise ValueError("learning_rate must be > 0 and steps >= 1")
        if min(self.lambda_causal, self.lambda_locality) < 0:
            raise ValueError("loss weights must be >= 0")
        if min(self.replay_size, self.paraphrases, self.retain_per_step, self.subspace_rank) < 0:
            raise ValueError("replay_size, paraphrases, retain_per_step, subspace_rank must be >= 0")
        if not 0 < self.generic_energy < 1:
            raise ValueError("generic_energy must be in (0, 1)")
        # Lists from JSON or config become tuples so the plan stays hashable and frozen.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

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
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=tuple(cfg.target_modules),
            layers=tuple(cfg.lora_layers),
            learning_rate=cfg.learning_rate,
            steps=cfg.steps,
            lambda_causal=cfg.lambda_causal,
            lambda_locality=cfg.lambda_locality,
            replay_size=cfg.replay_size,
            subspace_rank=cfg.subspace_rank,
            generic_energy=cfg.generic_energy,
            paraphrases=cfg.paraphrases,
            retain_per_step=cfg.retain_per_step,
            seed=cfg.seed,
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
        data["target_modules"] = list(self.target_modules)
        data["layers"] = list(self.layers)
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
