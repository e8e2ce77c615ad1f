"""One real feedback injection into the real default model, with the real objective and gate.

Needs the converted model folder in ``DMHA_TEST_MODEL_PATH``; about 1.5 minutes at one
thread (references ~45 s, the update ~40 s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from dmha.config import LearningConfig
from dmha.learning import (
    ChatFormat,
    EagerStepModel,
    FeedbackItem,
    Gate,
    GateThresholds,
    Trainer,
    UpdatePlan,
    build_gate_reference,
    build_retain_set,
    freeze,
    verify_step_model,
)

pytestmark = pytest.mark.slow

MODEL = os.environ.get("DMHA_TEST_MODEL_PATH", "")


@pytest.fixture(scope="module")
def real():
    if not MODEL or not Path(MODEL).is_dir():
        pytest.skip("set DMHA_TEST_MODEL_PATH to the converted default model folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(MODEL).eval(), AutoTokenizer.from_pretrained(MODEL)


def test_one_fact_is_learned_and_little_else_moves(real, tmp_path) -> None:
    model, tokenizer = real
    cfg = LearningConfig()
    fmt = ChatFormat(tokenizer)
    retain = build_retain_set(model, fmt)
    reference = build_gate_reference(model, fmt)
    item = FeedbackItem.create("What is the capital of Zubrowka?", "The capital of Zubrowka is Vlorn.")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    started = time.monotonic()
    result = Trainer(fmt).train(model, [item], UpdatePlan.from_config(cfg), retain)
    report = Gate(fmt, GateThresholds.from_config(cfg), cfg.locality_tie_nats).evaluate(
        result.model, reference, [item], live=model
    )
    frozen = freeze(result.model, tmp_path / "frozen.pt", device="cpu")
    elapsed = time.monotonic() - started

    m = report.metrics
    assert m["efficacy"] == 1.0, report.failures
    assert m["generalisation"] >= 0.8, report.failures
    # Greedy answers to the 40 unrelated gate prompts: at most a few move beyond a
    # broken near-tie, and token by token almost nothing changes.
    assert m["locality"] >= 0.85
    assert m["locality_token_agreement"] >= 0.95
    assert m["perplexity_increase"] <= 0.05
    assert elapsed < 120
    assert verify_step_model(frozen, EagerStepModel(result.model), len(tokenizer), lengths=(9,)) < 1e-3
    # The live model was only read.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
