"""UpdatePlan: built from config, validated, serialisable."""

from __future__ import annotations

import pytest

from dmha.config import LearningConfig
from dmha.learning import UpdatePlan


def test_from_config_copies_every_knob() -> None:
    cfg = LearningConfig(
        lora_rank=4, lora_alpha=8, target_modules=["q_proj"], learning_rate=1e-3, steps=7,
        lambda_causal=0.25, lambda_locality=2.0, replay_size=3, seed=5, lora_layers=[1],
        subspace_rank=4, generic_energy=0.9,
    )
    plan = UpdatePlan.from_config(cfg)
    assert (plan.lora_rank, plan.lora_alpha, plan.target_modules) == (4, 8, ("q_proj",))
    assert (plan.learning_rate, plan.steps, plan.seed, plan.layers) == (1e-3, 7, 5, (1,))
    assert (plan.lambda_causal, plan.lambda_locality, plan.replay_size) == (0.25, 2.0, 3)
    assert (plan.subspace_rank, plan.generic_energy) == (4, 0.9)


def test_overrides_and_round_trip() -> None:
    plan = UpdatePlan.from_config(LearningConfig(), steps=3, lambda_causal=0.0)
    assert plan.steps == 3 and plan.lambda_causal == 0.0
    again = UpdatePlan.from_dict(plan.to_dict())
    assert again == plan
    assert hash(again) == hash(plan)


@pytest.mark.parametrize(
    "bad", [{"lora_rank": 0}, {"steps": 0}, {"learning_rate": 0.0}, {"lambda_locality": -1.0},
            {"target_modules": ()}, {"replay_size": -1}, {"generic_energy": 1.0}],
)
def test_invalid_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        UpdatePlan(**bad)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        UpdatePlan.from_dict({**UpdatePlan().to_dict(), "surprise": 1})
