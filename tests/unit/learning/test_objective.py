"""The objective's terms: finite, and zero where student and teacher agree."""

from __future__ import annotations

import torch

from dmha.learning import FeedbackItem, Objective, UpdatePlan, build_retain_set
from dmha.learning.objective import kl_to_teacher

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")


def test_kl_is_zero_for_identical_distributions() -> None:
    logits = torch.randn(3, 11)
    assert float(kl_to_teacher(torch.log_softmax(logits, -1), logits)) < 1e-6
    assert float(kl_to_teacher(torch.log_softmax(logits, -1), -logits)) > 0.1


def test_terms_are_finite_and_locality_zero_before_training(tiny_model, fmt) -> None:
    seqs = [fmt.sequence(p, "Once upon a time.") for p in ["Tell me a story.", "Who wrote the book?"]]
    retain = build_retain_set(tiny_model, seqs)
    plan = UpdatePlan(paraphrases=2, retain_per_step=2, lambda_locality=1.0)
    objective = Objective(tiny_model, fmt, [ITEM], [], plan, retain)
    total, parts = objective.loss(tiny_model)
    for p in tiny_model.parameters():
        p.requires_grad_(True)
    total, parts = objective.loss(tiny_model)
    assert torch.isfinite(total)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert parts["ce"] > 0
    # The student is the teacher here: the retain KL vanishes (up to the float16
    # storage of the teacher log-probabilities).
    assert abs(parts["locality"]) < 1e-4
    # The causal teacher sees the premise, the student does not: a real gap.
    assert parts["causal"] > 0
    total.backward()  # the loss is differentiable end to end


def test_weights_switch_terms_off(tiny_model, fmt) -> None:
    plan = UpdatePlan(lambda_causal=0.0, lambda_locality=0.0)
    objective = Objective(tiny_model, fmt, [ITEM], [ITEM], plan, None)
    assert objective.causal == [] and objective.retain == []
    _, parts = objective.loss(tiny_model)
    assert parts["causal"] == 0.0 and parts["locality"] == 0.0


def test_floor_target_raises_only_the_targets_that_need_it() -> None:
    from dmha.learning.objective import floor_target

    probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.1, 0.3, 0.6]])
    out = floor_target(probs.log(), [1, 1, 2], 0.8).exp()
    torch.testing.assert_close(out.sum(-1), torch.ones(3))
    # Row 0: the target had 0.2 -> 0.8; the others keep their 7:1 ratio in the 0.2 left.
    torch.testing.assert_close(out[0], torch.tensor([0.175, 0.8, 0.025]))
    # Row 1 already met the floor: unchanged.
    torch.testing.assert_close(out[1], probs[1])
    torch.testing.assert_close(out[2], torch.tensor([0.05, 0.15, 0.8]))
    assert torch.equal(floor_target(probs.log(), [0, 0, 0], 0.0), probs.log())
