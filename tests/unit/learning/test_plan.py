"""UpdatePlan: built from config, validated, serialisable."""

from __future__ import annotations

import pytest

from dmha.config import LearningConfig
from dmha.learning import UpdatePlan


def test_from_config_copies_every_knob() -> None:
    cfg = LearningConfig(
        rank=4,
        scale=0.5,
        edit_layers=[7, 3],
        learning_rate=1e-3,
        steps=7,
        stop_margin=1.5,
        lambda_causal=0.25,
        lambda_locality=2.0,
        replay_size=3,
        seed=5,
        retain_per_step=2,
        null_threshold=0.02,
        max_delta_norm=3.0,
        min_key_share=0.1,
        paraphrases=2,
        subspace_rank=6,
    )
    plan = UpdatePlan.from_config(cfg)
    assert (plan.rank, plan.scale, plan.edit_layers) == (4, 0.5, (3, 7))
    assert (plan.learning_rate, plan.steps, plan.seed, plan.stop_margin) == (1e-3, 7, 5, 1.5)
    assert (plan.lambda_causal, plan.lambda_locality, plan.replay_size) == (0.25, 2.0, 3)
    assert (plan.null_threshold, plan.max_delta_norm, plan.min_key_share) == (0.02, 3.0, 0.1)
    assert (plan.retain_per_step, plan.paraphrases, plan.subspace_rank) == (2, 2, 6)


def test_overrides_and_round_trip() -> None:
    plan = UpdatePlan.from_config(LearningConfig(), steps=3, lambda_causal=0.0)
    assert plan.steps == 3 and plan.lambda_causal == 0.0
    again = UpdatePlan.from_dict(plan.to_dict())
    assert again == plan
    assert hash(again) == hash(plan)


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 0},
        {"steps": 0},
        {"learning_rate": 0.0},
        {"lambda_locality": -1.0},
        {"edit_layers": ()},
        {"replay_size": -1},
        {"null_threshold": 1.0},
        {"scale": 0.0},
        {"min_key_share": 1.0},
        {"max_delta_norm": -1.0},
    ],
)
def test_invalid_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        UpdatePlan(**bad)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        UpdatePlan.from_dict({**UpdatePlan().to_dict(), "surprise": 1})
