"""Row-space constraints on the adapters."""

from __future__ import annotations

import torch

from dmha.learning import FeedbackItem, Trainer, UpdatePlan, build_retain_set
from dmha.learning.subspace import collect_inputs, fact_projectors, lora_layers, project
from dmha.learning.trainer import _lora_config, peft_quietly

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")


def _student(model, plan):
    from peft import get_peft_model

    with peft_quietly():
        return get_peft_model(model, _lora_config(plan))


def test_inputs_shared_by_modules_are_recorded_once(tiny_model, fmt) -> None:
    plan = UpdatePlan(target_modules=("q_proj", "v_proj", "up_proj"))
    student = _student(tiny_model, plan)
    seqs = [fmt.sequence("Hi", "Hello."), fmt.sequence("Tell me a story.", "Once.")]
    inputs = collect_inputs(student, seqs)
    assert len(inputs) == len(lora_layers(student)) == 6
    assert inputs[0] is inputs[1]  # q_proj and v_proj of layer 0 read the same tensor
    assert inputs[0] is not inputs[2]
    assert inputs[0].shape == (sum(len(s.ids) for s in seqs), 32)


def test_fact_projectors_confine_a_to_fact_directions(tiny_model, fmt) -> None:
    plan = UpdatePlan(target_modules=("q_proj", "v_proj"), subspace_rank=4)
    student = _student(tiny_model, plan)
    generic = [fmt.sequence(p, "Sure.") for p in ["Hi", "Tell me a story.", "Who wrote the book?"]]
    facts = [fmt.sequence(ITEM.input, ITEM.target)]
    cache: dict = {}
    projectors = fact_projectors(student, facts, generic, rank=4, generic_energy=0.9, cache=cache)
    assert cache  # generic subspaces are kept for the next update
    project(projectors)
    for weight, basis, mode in projectors:
        assert mode == "keep" and basis.shape[0] <= 4
        # Every row of A now lies in the kept span.
        torch.testing.assert_close(weight @ basis.T @ basis, weight, atol=1e-5, rtol=1e-4)


def test_training_with_a_subspace_learns_and_keeps_the_prefix(tiny_model, fmt) -> None:
    retain = build_retain_set(tiny_model, fmt, ["Tell me a story.", "Who wrote the book?"], tokens=6)
    plan = UpdatePlan(
        steps=30, learning_rate=3e-2, subspace_rank=8, generic_energy=0.9, lambda_locality=0.0,
        target_modules=("q_proj", "v_proj", "gate_proj", "up_proj"), paraphrases=2,
    )
    trainer = Trainer(fmt)
    result = trainer.train(tiny_model, [ITEM], plan, retain)
    assert result.losses[-1] < result.losses[0]
    ids = torch.tensor([trainer.prefix])
    with torch.no_grad():
        # Unchanged up to float rounding of the merge (logits are O(5) here).
        torch.testing.assert_close(tiny_model(ids).logits, result.model(ids).logits, atol=1e-4, rtol=1e-4)
