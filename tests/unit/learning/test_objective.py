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
