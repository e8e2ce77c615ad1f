"""The causal meta-learner's parts on hand-made inputs: bounds, reward, repair, utility, Reptile."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmha.config import MetaConfig
from dmha.errors import InvalidArgument, LossSpike
from dmha.learning.meta.controller import MetaController
from dmha.learning.meta.learner import DELTAS, MetaCausalLearner, PlanAdjuster
from dmha.learning.meta.repair import repair_plan, stabilised
from dmha.learning.meta.reptile import MetaInit
from dmha.learning.meta.state import FEATURES, StepObservation, UpdateState, similar_outcomes
from dmha.learning.meta.store import MetaRecord, MetaStore, validate_insights
from dmha.learning.meta.training import reward, train_learner
from dmha.learning.meta.utility import goodness, ib_jsd, utility_entropy
from dmha.learning.plan import UpdatePlan

LAYERS = (4, 5, 6)


def _obs(step: int, loss: float, causal: float = 1.0) -> StepObservation:
    return StepObservation(
        step,
        loss,
        {"causal": causal, "locality": 0.01, "margin": -1.0},
        dict.fromkeys(LAYERS, 1.0),
        dict.fromkeys(LAYERS, 2.0),
    )


def _state(**over: float) -> UpdateState:
    s = UpdateState.build([_obs(1, 3.0), _obs(2, 2.5)], LAYERS, 0.4, (0.5, 0.5), 1, 0, 0)
    return UpdateState({**s.values, **over}, s.layers)


def test_state_vector_is_documented_and_finite() -> None:
    s = UpdateState.build([_obs(1, 3.0), _obs(2, float("nan"))], LAYERS, 0.4, (1.0, 0.2), 1, 2, 0)
    assert set(s.values) == set(FEATURES)
    v = s.vector()
    assert v.shape == (len(FEATURES),) and torch.isfinite(v).all()
    assert s.values["loss_first"] == 3.0 and s.values["similar_deploy"] == 1.0
    assert UpdateState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_untrained_learner_is_the_fixed_plan() -> None:
    plan = UpdatePlan(edit_layers=LAYERS)
    decision = PlanAdjuster(MetaConfig()).decide(MetaCausalLearner(), _state(), explore=False)
    assert all(v == 0.0 for v in decision.deltas.values())
    assert decision.active == LAYERS
    adjusted = decision.apply(plan)
    assert adjusted.learning_rate == plan.learning_rate and adjusted.lambda_causal == plan.lambda_causal
    assert "fixed plan" in decision.reason


def test_deltas_are_clipped_smoothed_and_nan_safe() -> None:
    cfg = MetaConfig(ema=0.5, max_log_change=0.5, exploration=0.0)
    learner = MetaCausalLearner()
    with torch.no_grad():
        learner.deltas.bias.copy_(torch.tensor([10.0, -10.0, float("nan")]))
    adjuster = PlanAdjuster(cfg)
    first = adjuster.decide(learner, _state(), explore=True)
    # EMA from 0: half of the raw value, then clipped to the bound.
    assert first.deltas["d_causal"] == 0.5 and first.deltas["d_locality"] == -0.5
    assert first.deltas["d_theta"] == 0.0  # NaN -> 0
    assert all(abs(v) <= cfg.max_log_change for v in first.deltas.values())
    plan = first.apply(UpdatePlan(edit_layers=LAYERS))
    assert plan.lambda_causal == pytest.approx(0.5 * math.exp(0.5))


def test_low_utility_modules_are_skipped_but_never_below_two() -> None:
    learner = MetaCausalLearner()
    with torch.no_grad():
        learner.utility.bias.copy_(torch.tensor([-4.0, 4.0, -3.0, 4.0, 4.0, 4.0, 4.0, 4.0]))
    d = PlanAdjuster(MetaConfig()).decide(learner, _state(), explore=False)
    assert d.active == (5, 6)  # slot 1 kept by utility, slot 2 kept as the second-best
    assert "skips layers 4" in d.reason
    repair = PlanAdjuster(MetaConfig()).decide(learner, _state(), explore=False, repair=True)
    assert repair.active == LAYERS  # repair mode: every gate on


def test_reward_arithmetic() -> None:
    cfg = MetaConfig(reward_causal=2.0, reward_flops=1.0, reject_penalty=5.0)
    assert reward(True, 0.5, 0.25, 0.3, cfg) == pytest.approx(-0.5 - 0.5 + 0.3)
    assert reward(False, 0.5, 0.25, 0.3, cfg) == pytest.approx(-0.7 - 5.0)
    assert reward(False, float("nan"), 0.1, 0.0, cfg) == -20.0 - 0.2 - 5.0  # NaN counts as the cap
    assert reward(False, float("nan"), 0.1, 0.0, cfg) < reward(True, 19.0, 0.0, 0.0, cfg)
    assert reward(True, 0.0, 0.0, 7.0, cfg) == 1.0  # the FLOPs share is capped at 1


def test_repair_plans_follow_the_failure() -> None:
    fixed = UpdatePlan(edit_layers=LAYERS, learning_rate=1e-2, steps=30, lambda_locality=1.0)
    failed = fixed.with_changes(edit_layers=(5, 6), learning_rate=4e-2, lambda_causal=2.0)
    div = repair_plan(failed, fixed, "diverged", ["loss nan"], 1)
    assert div.plan.learning_rate == pytest.approx(5e-3)  # θ reset, then halved
    assert div.plan.edit_layers == LAYERS  # every utility gate on
    assert div.plan.lambda_causal == pytest.approx(0.5 * (2.0 + 0.5))  # λ smoothed
    under = repair_plan(fixed, fixed, "gate", ["efficacy 0.000 < 0.990"], 1)
    assert under.plan.learning_rate > fixed.learning_rate and under.plan.steps > fixed.steps
    over = repair_plan(fixed, fixed, "gate", ["efficacy 0.000 < 0.990", "kl_mean 0.0200 > 0.0100"], 1)
    assert over.plan.learning_rate < fixed.learning_rate and over.plan.lambda_locality > fixed.lambda_locality
    assert "learning_rate" in over.changes and over.plan.seed != fixed.seed
    # A gated edit that did not take opens its gate wider (never below the retain prompts' level).
    gated = fixed.with_changes(gate_margin=2.0)
    assert repair_plan(gated, gated, "gate", ["efficacy 0.000 < 0.990"], 1).plan.gate_margin == 1.5
    assert repair_plan(gated, gated, "gate", ["efficacy 0.000 < 0.990"], 3).plan.gate_margin == 1.0
    wider = repair_plan(gated, gated, "gate", ["locality 0.9800 < 0.9900"], 1)
    assert wider.plan.gate_margin == 2.5 and wider.changes["gate_margin"] == (2.0, 2.5)
    assert repair_plan(fixed, fixed, "gate", ["efficacy 0.000 < 0.990"], 1).plan.gate_margin == 0.0


def test_stabilisation_is_the_moving_mean_converging() -> None:
    assert not stabilised([5, 4, 3, 2, 1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert stabilised([1.0] * 11)
    assert not stabilised([1.0] * 5)
    assert not stabilised([1.0] * 10 + [float("nan")])


def test_hook_raises_on_a_loss_spike_and_on_nan_is_left_to_the_editor(tmp_path) -> None:
    ctl = MetaController(MetaConfig(spike_nats=1.0, observe_steps=5), tmp_path)
    plan = UpdatePlan(edit_layers=LAYERS)
    hook = ctl.attempt("What is X?", plan, plan, 0, 1, 0)
    assert hook.observe(_obs(1, 3.0), [3.0], 0.5) is None
    with pytest.raises(LossSpike) as err:
        hook.observe(_obs(2, 4.5), [3.0, 4.5], 0.5)
    assert err.value.jump == pytest.approx(1.5)


def test_hook_adjusts_after_the_observed_steps(tmp_path) -> None:
    ctl = MetaController(MetaConfig(observe_steps=2), tmp_path)
    plan = UpdatePlan(edit_layers=LAYERS)
    hook = ctl.attempt("What is X?", plan, plan, 0, 1, 0)
    assert hook.observe(_obs(1, 3.0), [3.0], 0.5) is None
    adj = hook.observe(_obs(2, 2.0), [3.0, 2.0], 0.5)
    assert adj is not None and adj.active == LAYERS and adj.plan.learning_rate == plan.learning_rate
    assert len(hook.goodness) == len(LAYERS) and max(hook.goodness) == pytest.approx(1.0)


def test_goodness_and_ib_jsd_by_hand() -> None:
    u = torch.tensor([1.0, 0.5, 0.0])
    q = goodness(u, torch.tensor([2.0, 4.0, 9.0]), torch.tensor([1.0, 1.0, 1.0]), eps=0.0)
    assert q.tolist() == pytest.approx([1.0, 1.0, 0.0])  # [2, 2, 0] / 2
    assert goodness(torch.zeros(2), torch.ones(2), torch.ones(2)).tolist() == [0.0, 0.0]
    same = ib_jsd(torch.tensor([0.3, 0.7]), torch.tensor([0.3, 0.7]), beta=0.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    # JSD of Bernoulli(1) and Bernoulli(0) is ln 2.
    far = ib_jsd(torch.tensor([1.0]), torch.tensor([0.0]), beta=0.0)
    assert float(far) == pytest.approx(math.log(2), abs=1e-3)
    assert float(ib_jsd(torch.tensor([0.5]), torch.tensor([0.5]), beta=0.1)) == pytest.approx(0.05)
    assert utility_entropy(torch.tensor([0.5])) == pytest.approx(1.0)


def test_reptile_and_fomaml_updates_on_a_toy_model() -> None:
    init = MetaInit("reptile", step=0.5)
    assert init.initial(0, torch.Size([2, 2]), torch.Size([3, 2])) is None
    first = {"a": torch.ones(2, 2), "b": torch.zeros(3, 2)}
    init.update({0: first})
    init.update({0: {"a": 3 * torch.ones(2, 2), "b": 2 * torch.ones(3, 2)}})
    phi = init.initial(0, torch.Size([2, 2]), torch.Size([3, 2]))
    assert phi is not None
    # A′ starts from Φ; B (what earlier facts wrote) is kept in Φ but never reused.
    assert torch.allclose(phi["a"], 2 * torch.ones(2, 2)) and set(phi) == {"a"}
    assert torch.allclose(init.phi[0]["b"], torch.ones(3, 2))
    assert init.initial(0, torch.Size([4, 2]), torch.Size([3, 2])) is None  # other shape: default init
    fo = MetaInit("fomaml", step=0.1)
    fo.update({0: first})
    fo.update({0: first}, grads={0: {"a": torch.ones(2, 2), "b": torch.ones(3, 2)}})
    assert torch.allclose(fo.phi[0]["a"], 0.9 * torch.ones(2, 2))
    assert MetaInit("none").initial(0, torch.Size([2, 2]), torch.Size([3, 2])) is None


def test_reptile_meta_init_fits_a_family_of_tasks_faster() -> None:
    # Toy: each task is "reach w* = c + noise" by gradient steps; Φ learned by Reptile
    # over tasks starts closer to an unseen task than the zero init does.
    gen = torch.Generator().manual_seed(0)
    centre = torch.tensor([2.0, -1.0])
    init = MetaInit("reptile", step=0.3)
    for _ in range(30):
        target = centre + 0.1 * torch.randn(2, generator=gen)
        start = init.initial(0, torch.Size([2]), torch.Size([1]))
        w = start["a"].clone() if start else torch.zeros(2)
        for _ in range(5):
            w = w - 0.3 * 2 * (w - target)
        init.update({0: {"a": w, "b": torch.zeros(1)}})
    phi = init.initial(0, torch.Size([2]), torch.Size([1]))
    assert phi is not None
    unseen = centre + 0.1 * torch.randn(2, generator=gen)
    assert float((phi["a"] - unseen).norm()) < 0.5 * float(unseen.norm())


def test_corrupt_learner_checkpoint_falls_back_to_the_fixed_plan(tmp_path) -> None:
    store = MetaStore(tmp_path)
    (tmp_path / "versions.json").write_text("not json")
    learner, version = store.load_learner()
    assert version is None
    d = PlanAdjuster(MetaConfig()).decide(learner, _state(), explore=False)
    assert all(v == 0 for v in d.deltas.values())
    (tmp_path / "init.pt").write_bytes(b"garbage")
    assert MetaInit.load(tmp_path / "init.pt", "reptile", 0.3).phi == {}


def _record(i: int, deployed: bool, d_theta: float) -> MetaRecord:
    state = _state(loss_first=float(i % 3))
    return MetaRecord(
        f"job{i}",
        0,
        f"question {i}",
        state.to_dict(),
        {"d_causal": 0.0, "d_locality": 0.0, "d_theta": d_theta},
        [1.0, 0.5, 0.2],
        "deployed" if deployed else "rejected",
        0.0 if deployed else -5.0,
        {"steps": 10.0, "step_budget": 30.0, "causal_last": 0.1},
        {"4": 0.2, "5": 0.8},
    )


def test_learner_training_moves_towards_rewarded_actions(tmp_path) -> None:
    records = [_record(i, deployed=i % 2 == 0, d_theta=0.5 if i % 2 == 0 else -0.5) for i in range(12)]
    cfg = MetaConfig(min_records=6, train_epochs=200)
    learner = MetaCausalLearner()
    info = train_learner(learner, records, cfg, "m0001")
    with torch.no_grad():
        d, _ = learner(torch.stack([r.update_state().vector() for r in records]))
    assert float(d[:, DELTAS.index("d_theta")].mean()) > 0.1  # the deployed attempts' action wins
    assert info.records == 12 and math.isfinite(info.loss)
    with pytest.raises(ValueError):
        train_learner(MetaCausalLearner(), records[:3], cfg, "m0002")
    store = MetaStore(tmp_path)
    store.save_learner(learner, info)
    loaded, version = store.load_learner()
    assert version == "m0001"
    with torch.no_grad():
        assert torch.allclose(loaded(records[0].update_state().vector()[None])[0], d[:1], atol=1e-6)


def test_insights_export_import_round_trip_and_validation(tmp_path) -> None:
    a = MetaStore(tmp_path / "a")
    for i in range(3):
        a.append(_record(i, deployed=True, d_theta=0.0))
    doc = json.loads(json.dumps(a.insights()))
    assert doc["updates"] == 3 and doc["deployed"] == 3
    assert [m["layer"] for m in doc["mechanisms"]] == [4, 5]
    assert doc["mechanisms"][1]["strength"] == pytest.approx(0.8)
    b = MetaStore(tmp_path / "b")
    assert b.import_insights(doc) == 3
    assert b.import_insights(doc) == 0  # idempotent
    assert [r.job_id for r in b.records()] == ["job0", "job1", "job2"]
    bad = json.loads(json.dumps(doc))
    bad["records"][1]["outcome"] = "maybe"
    with pytest.raises(InvalidArgument, match=r"insights.records\[1\].outcome"):
        validate_insights(bad)
    with pytest.raises(InvalidArgument, match="insights.format"):
        validate_insights({"records": []})
    nan = json.loads(json.dumps(doc))
    nan["records"][0]["reward"] = float("nan")
    with pytest.raises(InvalidArgument, match=r"insights.records\[0\].*finite"):
        validate_insights(nan)
    # Imported history goes before the local one: the replay window keeps local records.
    c = MetaStore(tmp_path / "c")
    c.append(_record(7, deployed=True, d_theta=0.0))
    assert c.import_insights(doc) == 3
    assert [r.job_id for r in c.records()] == ["job0", "job1", "job2", "job7"]


def test_similar_outcomes_by_word_overlap() -> None:
    past = [("What is the capital of Foo?", True, 0.2), ("Who wrote Bar?", False, 1.0)]
    rate, share = similar_outcomes("What is the capital of Baz?", past, k=1)
    assert (rate, share) == (1.0, 0.2)
    assert similar_outcomes("anything", []) == (0.5, 0.5)
