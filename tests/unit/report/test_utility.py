"""The utility map from a real registry's cumulative deltas."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmha.learning import FeedbackItem, Registry, UpdatePlan, save_delta
from dmha.report import JobRecord, UpdateCost, utility_section
from dmha.report.collect import registry_changes, update_costs, version_record
from dmha.report.dynamics import rows_from_versions
from dmha.report.utility import utilities_of
from tests.unit.report.report_checks import header, png_size, rows

L4 = "model.layers.4.mlp.down_proj.weight"
L5 = "model.layers.5.mlp.down_proj.weight"


@pytest.fixture
def registry(tmp_path):
    base = tmp_path / "model"
    base.mkdir()
    reg = Registry(tmp_path / "registry", base)
    torch.manual_seed(0)
    d1 = {L4: torch.randn(4, 6), L5: torch.zeros(4, 6)}
    d2 = {L4: d1[L4] + torch.ones(4, 6), L5: torch.full((4, 6), 2.0)}
    parent = "base"
    for i, delta in enumerate((d1, d2), 1):
        staging = reg.new_staging()
        save_delta(delta, staging / "delta.safetensors")
        item = FeedbackItem(f"f{i}", f"Question {i}?", f"Answer {i}.")
        metrics = {"steps": 5.0, "train_seconds": 12.0 * i, "efficacy": 1.0}
        parent = reg.commit(staging, parent, [item], UpdatePlan(), metrics).version_id
    return reg, d1, d2


def test_update_norms_are_differences_of_cumulative_deltas(tmp_path, registry):
    reg, d1, d2 = registry
    versions = [version_record(v, reg.live_id) for v in reg.versions()]
    changes = registry_changes(reg, versions)
    assert [c.version_id for c in changes] == ["v1", "v2"]
    assert changes[0].measure == changes[1].measure == "update"
    assert math.isclose(changes[0].norms[L4], float(torch.linalg.norm(d1[L4])), rel_tol=1e-6)
    assert math.isclose(changes[1].norms[L4], float(torch.linalg.norm(torch.ones(4, 6))), rel_tol=1e-6)  # sqrt 24
    assert math.isclose(changes[1].norms[L5], float(torch.linalg.norm(d2[L5])), rel_tol=1e-6)

    # Records from before the editor counted FLOPs: estimated from the feedback's tokens.
    costs = update_costs(rows_from_versions(versions), reg, lambda q, t: len(q.split()) + len(t.split()), 1000)
    plan = UpdatePlan()
    assert [c.label for c in costs] == ["v1", "v2"]
    assert costs[0].sequences_per_step == 1 + plan.paraphrases + 0 + plan.retain_per_step
    assert costs[1].sequences_per_step == costs[0].sequences_per_step + 1  # one earlier item replayed
    assert costs[0].counted_flops is None and costs[0].flops == 6 * 1000 * 5 * costs[0].sequences_per_step * 4

    section = utility_section(changes, costs, tmp_path)
    assert section.images == ["utility_map.png"]
    assert png_size(tmp_path / "utility_map.png") == (825, 726)  # two panels: change and cost
    assert header(tmp_path / "flops_log.csv") == [
        "update",
        "steps",
        "sequences_per_step",
        "tokens_per_sequence",
        "params",
        "counted_flops",
        "estimated_flops",
        "train_seconds",
    ]
    assert [r["module"] for r in rows(tmp_path / "utility_map.csv")] == [L4, L5, L4, L5]
    stat = json.loads((tmp_path / "utility_stat.json").read_text())
    assert abs(sum(stat["share_of_change"].values()) - 1) < 1e-9
    assert (
        "stands in" in section.finding and "(estimated)" in section.finding
    )  # no meta-learner utilities were recorded


def test_meta_learner_utilities_and_counted_flops(tmp_path):
    def job(job_id, state, created, utilities, active, flops):
        meta = {"utilities": utilities, "active": active, "reason": "r"}
        plan = {**UpdatePlan().to_dict(), "extra": {"meta": meta}}
        metrics = {"steps": 4.0, "flops": flops, "train_seconds": 30.0}
        return JobRecord(job_id, state, created, created + 60, metrics, plan, "v1" if state == "deployed" else "")

    jobs = [
        job("bbbbbbbb", "rejected", 20.0, {"4": 0.9, "5": 0.3}, [4], 2e12),
        job("aaaaaaaa", "deployed", 10.0, {"4": 0.8, "5": 0.7}, [4, 5], 1e12),
        JobRecord("cccccccc", "queued", 30.0, 30.0),
    ]
    utilities = utilities_of(jobs)
    assert [(u.label, u.active) for u in utilities] == [("v1", (4, 5)), ("bbbbbb (rejected)", (4,))]
    costs = update_costs(jobs, None, None, 1000)  # type: ignore[arg-type]  # counted: no registry needed
    assert [(c.label, c.flops) for c in costs] == [("v1", 1e12), ("bbbbbb (rejected)", 2e12)]
    section = utility_section([], costs, tmp_path, utilities)
    u = rows(tmp_path / "utility_u.csv")
    assert [(r["update"], r["layer"], r["u"], r["active"]) for r in u] == [
        ("v1", "4", "0.8", "1"),
        ("v1", "5", "0.7", "1"),
        ("bbbbbb (rejected)", "4", "0.9", "1"),
        ("bbbbbb (rejected)", "5", "0.3", "0"),
    ]
    stat = json.loads((tmp_path / "utility_stat.json").read_text())
    assert stat["mean_utility"] == {"L4": pytest.approx(0.85), "L5": pytest.approx(0.5)} and stat["gates_off"] == 1
    assert "layer 4 most useful" in section.finding and "counted" in section.finding
    assert png_size(tmp_path / "utility_map.png")[1] == 726  # utilities and cost


def test_pruned_parent_falls_back_to_the_cumulative_norm(registry):
    reg, _d1, d2 = registry
    reg.promote("v2")
    assert reg.prune(keep_ancestors=0, keep_last=1) == ["v1"]
    versions = [version_record(v, reg.live_id) for v in reg.versions()]
    (change,) = registry_changes(reg, versions)
    assert change.version_id == "v2" and change.measure == "cumulative"
    assert math.isclose(change.norms[L5], float(torch.linalg.norm(d2[L5])), rel_tol=1e-6)


def test_no_update_is_an_empty_section(tmp_path):
    section = utility_section([], [UpdateCost("v1", 1, 1, None, 10, None)], tmp_path)
    assert section.images == [] and "no deployed update" in (section.empty_reason or "")
