"""Real knowledge edits of the real default model, with the default plan and gate.

Uses the model ``make test`` prepares and the learning references ``dmha setup``
caches next to it (computed here when missing). A fact the model cannot know is
taught once (a gated edit, the default): it must be answered, also when asked in
held-out phrasings, while >= 99 % of the confident next-token choices and >= 95 % of
the greedy continuations of 100 unrelated probe prompts stay as they were. A second
fact is merged into the weights under a plan a trained meta-learner chose.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dmha.config import LearningConfig, ModelConfig, default_data_dir
from dmha.learning import (
    ChatFormat,
    EagerStepModel,
    Editor,
    FeedbackItem,
    Gate,
    GateThresholds,
    UpdatePlan,
    ensure_references,
    freeze,
    verify_step_model,
)
from dmha.learning.editor import delta_name
from dmha.learning.gated import dense_names
from dmha.learning.generation import greedy
from dmha.learning.meta.controller import MetaController
from dmha.learning.meta.state import FEATURES, UpdateState
from dmha.learning.meta.store import MetaRecord
from dmha.learning.meta.training import train_learner
from dmha.learning.online import learning_cache_dir

pytestmark = pytest.mark.slow

MODEL = os.environ.get("DMHA_TEST_MODEL_PATH", "")


@pytest.fixture(scope="module")
def real():
    if not MODEL or not Path(MODEL).is_dir():
        # `make test` always prepares the model, so CI runs this test.
        pytest.skip("set DMHA_TEST_MODEL_PATH to the converted default model folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(MODEL).eval(), AutoTokenizer.from_pretrained(MODEL)


def test_one_fact_is_deployed_generalises_and_little_else_moves(real, tmp_path) -> None:
    model, tokenizer = real
    cfg = LearningConfig()
    fmt = ChatFormat(tokenizer, ModelConfig().system_prompt)
    refs = ensure_references(model, Path(MODEL), fmt, cfg.edit_layers, learning_cache_dir(default_data_dir()))
    item = FeedbackItem.create("Who is the mayor of Quorvelle?", "The mayor of Quorvelle is Tesbrink.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in cfg.edit_layers}

    plan = UpdatePlan.from_config(cfg)
    result = Editor(fmt).train(model, [item], plan, refs.stats, base, {}, refs.retain)
    report = Gate(fmt, GateThresholds.from_config(cfg)).evaluate(result.model, refs.gate, [item], [], model)

    m = report.metrics
    # Learned, carried to held-out phrasings (at most one of six may miss), and local:
    # the live model's confident choices on 100 unrelated probes stay, within the KL budget.
    assert m["efficacy"] == 1.0, report.failures
    assert m["generalisation"] >= 5 / 6, report.failures
    assert m["locality"] >= 0.99 and m["n_retain"] >= 100
    # Gated (the default), which a merged edit cannot match (its strict figure is
    # ~0.75): the greedy 32-token continuations of the probes stay word for word.
    assert result.metrics["gated_layers"] >= 1 and not dense_names(result.delta)
    assert m["locality_strict"] >= 0.95, m
    assert m["kl_mean"] <= cfg.max_kl_mean and m["perplexity_increase"] <= cfg.max_perplexity_increase
    asked = fmt.prompt("Tell me who the mayor of Quorvelle is.")
    answer = fmt.decode(greedy(result.model, [asked], 24, fmt.eos_ids)[0])
    assert "Tesbrink" in answer
    # Only the edit layers' down_proj changed (merged or gated), and the version is
    # their delta, nothing more.
    edited = {delta_name(i).removesuffix(".weight") for i in cfg.edit_layers}
    assert result.delta and {n.rsplit(".", 1)[0].removesuffix(".gated") for n in result.delta} <= edited
    frozen = freeze(result.model, tmp_path / "frozen.pt", device="cpu")
    assert verify_step_model(frozen, EagerStepModel(result.model), len(tokenizer), lengths=(9,)) < 1e-3
    # The live model was only read.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_real_edit_planned_by_a_trained_meta_learner(real, tmp_path) -> None:
    model, tokenizer = real
    # Merged (gate_margin 0): the path a fact takes when its tokens do not stand out
    # enough to gate, kept under test on the real model here.
    cfg = LearningConfig(gate_margin=0.0)
    fmt = ChatFormat(tokenizer, ModelConfig().system_prompt)
    refs = ensure_references(model, Path(MODEL), fmt, cfg.edit_layers, learning_cache_dir(default_data_dir()))
    # A learner trained on a history where larger steps deployed and smaller ones did not.
    records = []
    for i in range(8):
        good = i % 2 == 0
        values = {"loss_first": 2.0 + 0.1 * i, "key_share": 0.5, "causal_before": 1.0}
        records.append(
            MetaRecord(
                f"j{i}",
                0,
                f"q{i}",
                UpdateState(dict.fromkeys(FEATURES, 0.0) | values, tuple(cfg.edit_layers)).to_dict(),
                {"d_causal": 0.0, "d_locality": 0.0, "d_theta": 0.3 if good else -0.3},
                [1.0] * 5,
                "deployed" if good else "rejected",
                0.0 if good else -10.0,
            )
        )
    meta = MetaController(cfg.meta.model_copy(update={"exploration": 0.0, "ema": 0.0}), tmp_path / "meta")
    info = train_learner(meta.learner, records, cfg.meta, "m0001")
    meta.store.save_learner(meta.learner, info)
    meta = MetaController(cfg.meta.model_copy(update={"exploration": 0.0, "ema": 0.0}), tmp_path / "meta")
    assert meta.trained
    item = FeedbackItem.create("Who is the treasurer of Brannock Hall?", "The treasurer of Brannock Hall is Ovelin.")
    params = dict(model.named_parameters())
    base = {delta_name(i): params[delta_name(i)].detach().clone() for i in cfg.edit_layers}
    plan = UpdatePlan.from_config(cfg)
    hook = meta.attempt(item.input, plan, plan, 0, 1, 0)
    result = Editor(fmt).train(model, [item], plan, refs.stats, base, {}, refs.retain, hook=hook)
    assert hook.decision is not None and result.plan is not None
    # The learner changed the plan (a larger step), and said why.
    assert result.plan.learning_rate > plan.learning_rate
    assert "learning rate" in result.plan.extra["meta"]["reason"]
    report = Gate(fmt, GateThresholds.from_config(cfg)).evaluate(result.model, refs.gate, [item], [], model)
    assert report.passed, (report.reasons, report.failures)
    assert result.flops > 0 and sum(result.mechanisms.values()) == pytest.approx(1.0)
