"""The regression gate: target checks, and a locality measure that ignores near-ties."""

from __future__ import annotations

import pytest
import torch

from dmha.learning import (
    Editor,
    FeedbackItem,
    Gate,
    GateThresholds,
    KeyStats,
    UpdatePlan,
    build_gate_reference,
    compare_logits,
)
from dmha.learning.editor import delta_name
from dmha.learning.gate import contains_target, probe_live

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


def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)


def test_flipped_near_ties_do_not_count_but_confident_flips_do() -> None:
    # Live: position 0 confident (gap 3 nats), position 1 a near-tie (gap 0.01).
    live = [_logits([[3.0, 0.0, -1.0], [1.00, 0.99, -5.0]])]
    tie_flip = [_logits([[3.0, 0.0, -1.0], [0.99, 1.00, -5.0]])]
    score = compare_logits(live, tie_flip, confident_nats=0.5)
    assert score.confident_agreement == 1.0 and score.confident_positions == 1
    assert score.token_agreement == 0.5 and score.strict == 0.0
    assert score.kl_mean < 1e-3
    confident_flip = [_logits([[0.0, 3.0, -1.0], [1.00, 0.99, -5.0]])]
    score = compare_logits(live, confident_flip, confident_nats=0.5)
    assert score.confident_agreement == 0.0
    assert score.kl_mean > 0.5 and score.kl_prompt_max == pytest.approx(score.kl_mean)


def test_identical_logits_score_perfectly() -> None:
    live = [torch.randn(5, 7, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    score = compare_logits(live, [x.clone() for x in live], confident_nats=0.5)
    assert (score.confident_agreement, score.strict, score.token_agreement) == (1.0, 1.0, 1.0)
    assert score.kl_mean == pytest.approx(0.0, abs=1e-6)


def test_live_model_against_itself(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, PROMPTS)
    report = Gate(fmt, GateThresholds()).evaluate(tiny_model, ref, [ITEM], [], tiny_model)
    assert report.metrics["locality"] == 1.0
    assert report.metrics["locality_strict"] == 1.0
    assert report.metrics["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert abs(report.metrics["perplexity_increase"]) < 1e-6
    # A random model does not know the fact: rejected, with a reason per failed check.
    assert not report.passed
    assert any(r.startswith("efficacy") for r in report.reasons)
    assert report.metrics["n_paraphrases"] >= 3


def test_edited_candidate_is_judged_and_every_failure_named(tiny_model, fmt) -> None:
    ref = build_gate_reference(tiny_model, fmt, PROMPTS)
    stats = KeyStats.compute(tiny_model, (), [fmt.sequence(p) for p in PROMPTS], (0, 1))
    params = dict(tiny_model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in (0, 1)}
    plan = UpdatePlan(
        edit_layers=(0, 1),
        rank=4,
        steps=60,
        learning_rate=5e-2,
        paraphrases=2,
        lambda_locality=0.0,
        stop_margin=0.0,
        null_threshold=0.5,
        min_key_share=0.0,
    )
    candidate = Editor(fmt).train(tiny_model, [ITEM], plan, stats, base, {}).model
    lenient = GateThresholds(
        min_efficacy=1.0,
        min_generalisation=0.0,
        min_locality=0.0,
        max_kl_mean=1e9,
        max_kl_prompt=1e9,
        max_perplexity_increase=1e9,
    )
    report = Gate(fmt, lenient).evaluate(candidate, ref, [ITEM], [], tiny_model)
    assert report.metrics["efficacy"] == 1.0
    assert report.passed, report.reasons
    assert report.metrics["kl_mean"] > 0  # the edit moved something
    # The gate's own scores of the candidate are what probing it as the live model gives
    # (the worker reuses them after a deploy instead of scoring again).
    again = probe_live(candidate, ref)
    assert report.probe is not None and report.probe.heldout_nll == pytest.approx(again.heldout_nll)
    assert all(torch.equal(a, b) for a, b in zip(report.probe.logprobs, again.logprobs, strict=True))
    impossible = GateThresholds(
        min_efficacy=1.0,
        min_generalisation=0.0,
        min_locality=1.01,
        max_kl_mean=-1.0,
        max_kl_prompt=-1.0,
        max_perplexity_increase=-1.0,
    )
    verdict = Gate(fmt, impossible).evaluate(candidate, ref, [ITEM], [], tiny_model)
    assert not verdict.passed
    named = " ".join(verdict.reasons)
    for metric in ("locality", "kl_mean", "kl_prompt_max", "perplexity"):
        assert metric in named
