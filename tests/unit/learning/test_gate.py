"""The regression gate on the tiny model."""

from __future__ import annotations

import pytest

from dmha.learning import FeedbackItem, Gate, GateThresholds, Trainer, UpdatePlan, build_gate_reference
from dmha.learning.gate import contains_target

PROMPTS = ["Tell me a story.", "Who wrote the book?", "What is 2 + 2?"]
ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")


@pytest.mark.parametrize(
    ("answer", "target", "expected"),
    [
        ("Sure! The capital of Zubrowka is  VLORN.", "the capital of zubrowka is Vlorn.", True),
        ("It is Vlorn", "Vlorn!", True),
        ("It is Vlor", "Vlorn", False),
        ("anything", "...", False),
    ],
)
def test_contains_target(answer: str, target: str, expected: bool) -> None:
    assert contains_target(answer, target) is expected


def test_live_model_against_itself_keeps_locality(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, PROMPTS)
    report = Gate(fmt, GateThresholds()).evaluate(tiny_model, ref, [ITEM])
    assert report.metrics["locality"] == 1.0
    assert report.metrics["locality_token_agreement"] == 1.0
    assert abs(report.metrics["perplexity_increase"]) < 1e-6
    # A random model does not know the fact: rejected, with a reason per failed check.
    assert not report.passed
    assert any(r.startswith("efficacy") for r in report.reasons)
    assert report.metrics["n_paraphrases"] >= 3


def test_trained_candidate_is_judged(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, PROMPTS)
    plan = UpdatePlan(
        steps=40, learning_rate=3e-2, lora_rank=8, lambda_locality=0.0, paraphrases=3,
        target_modules=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"),
    )
    candidate = Trainer(fmt).train(tiny_model, [ITEM], plan, None).model
    lenient = GateThresholds(min_efficacy=1.0, min_generalisation=0.0, min_locality=0.0,
                             max_perplexity_increase=100.0)
    report = Gate(fmt, lenient).evaluate(candidate, ref, [ITEM], replay=[], live=tiny_model)
    assert report.metrics["efficacy"] == 1.0
    assert report.passed, report.reasons
    strict = Gate(fmt, GateThresholds(min_locality=1.0, min_generalisation=0.0,
                                      max_perplexity_increase=100.0))
    verdict = strict.evaluate(candidate, ref, [ITEM])
    if verdict.metrics["locality"] < 1.0:
        assert not verdict.passed and any("locality" in r for r in verdict.reasons)


def test_tie_tolerance_only_relaxes(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, PROMPTS)
    plan = UpdatePlan(steps=10, learning_rate=3e-2, lambda_locality=0.0, paraphrases=0)
    candidate = Trainer(fmt).train(tiny_model, [ITEM], plan, None).model
    strict = Gate(fmt, GateThresholds()).evaluate(candidate, ref, [ITEM])
    loose = Gate(fmt, GateThresholds(), tie_nats=100.0).evaluate(candidate, ref, [ITEM], live=tiny_model)
    assert loose.metrics["locality"] == 1.0  # every divergence is "within 100 nats"
    assert loose.metrics["locality_strict"] == strict.metrics["locality"]
