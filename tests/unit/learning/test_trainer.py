"""LoRA updates on the tiny model: the live model is never touched."""

from __future__ import annotations

import copy

import pytest
import torch

from dmha.learning import (
    FeedbackItem,
    Trainer,
    TrainingDiverged,
    UpdatePlan,
    apply_adapter,
    build_retain_set,
)

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
PLAN = UpdatePlan(steps=4, learning_rate=1e-2, paraphrases=2, retain_per_step=2, lora_rank=4)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_update_returns_new_model_and_leaves_live_alone(tiny_model, fmt, tmp_path) -> None:
    before = _state(tiny_model)
    retain = build_retain_set(tiny_model, fmt, ["Tell me a story."], tokens=4)
    seen: list[tuple[int, int, float]] = []
    result = Trainer(fmt).train(
        tiny_model, [ITEM], PLAN, retain, progress=lambda i, n, loss: seen.append((i, n, loss)),
        adapter_dir=tmp_path / "adapter",
    )
    assert result.model is not tiny_model
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(torch.isfinite(torch.tensor(loss)) for _, _, loss in seen)
    assert result.losses[-1] < result.losses[0]
    after = _state(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = _state(result.model)
    assert any(not torch.equal(before[k], changed[k]) for k in before)
    assert not any("lora" in k for k in changed)  # merged, plain weights
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_saved_adapter_rebuilds_the_merged_model_bitwise(tiny_model, fmt, tmp_path) -> None:
    result = Trainer(fmt).train(tiny_model, [ITEM], PLAN, None, adapter_dir=tmp_path / "a")
    rebuilt = apply_adapter(copy.deepcopy(tiny_model), tmp_path / "a")
    merged = result.model.state_dict()
    assert all(torch.equal(merged[k], v) for k, v in rebuilt.state_dict().items())


def test_shared_prefix_states_are_unchanged(tiny_model, fmt) -> None:
    trainer = Trainer(fmt)
    result = trainer.train(tiny_model, [ITEM], PLAN.with_changes(learning_rate=5e-2), None)
    ids = torch.tensor([trainer.prefix])
    with torch.no_grad():
        old = tiny_model(ids, output_hidden_states=True).hidden_states
        new = result.model(ids, output_hidden_states=True).hidden_states
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # ... while the question itself is answered differently.
    q = torch.tensor([fmt.prompt(ITEM.input)])
    with torch.no_grad():
        assert not torch.allclose(tiny_model(q).logits, result.model(q).logits)


def test_divergence_raises_and_live_is_untouched(tiny_model, fmt) -> None:
    before = _state(tiny_model)
    with pytest.raises(TrainingDiverged, match="diverged"):
        Trainer(fmt).train(tiny_model, [ITEM], PLAN.with_changes(learning_rate=1e30, steps=6), None)
    after = _state(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_early_stop_on_margin(tiny_model, fmt) -> None:
    plan = PLAN.with_changes(
        steps=80, learning_rate=3e-2, stop_margin=0.5, lambda_locality=0.0, lambda_causal=0.0,
        lora_rank=8, target_modules=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"),
    )
    result = Trainer(fmt).train(tiny_model, [ITEM], plan, None)
    assert len(result.losses) < 80
    assert result.parts["margin"] >= 0.5


def test_needs_items(tiny_model, fmt) -> None:
    with pytest.raises(ValueError):
        Trainer(fmt).train(tiny_model, [], PLAN, None)
