"""The utility map from a real registry's cumulative deltas."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmha.learning import FeedbackItem, Registry, UpdatePlan, save_delta
from dmha.report import UpdateCost, utility_section
from dmha.report.collect import registry_changes, registry_costs, version_record
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

    costs = registry_costs(reg, versions, lambda q, t: len(q.split()) + len(t.split()), params=1000)
    plan = UpdatePlan()
    assert costs[0].sequences_per_step == 1 + plan.paraphrases + 0 + plan.retain_per_step
    assert costs[1].sequences_per_step == costs[0].sequences_per_step + 1  # one earlier item replayed
    assert costs[0].flops == 6 * 1000 * 5 * costs[0].sequences_per_step * 4

    section = utility_section(changes, costs, tmp_path)
    assert section.images == ["utility_map.png"]
    w, h = png_size(tmp_path / "utility_map.png")
    assert (w, h) == (770, 770)
    assert header(tmp_path / "flops_log.csv") == [
        "version",
        "steps",
        "sequences_per_step",
        "tokens_per_sequence",
        "params",
        "est_flops",
        "train_seconds",
    ]
    assert [r["module"] for r in rows(tmp_path / "utility_map.csv")] == [L4, L5, L4, L5]
    stat = json.loads((tmp_path / "utility_stat.json").read_text())
    assert abs(sum(stat["share_of_change"].values()) - 1) < 1e-9


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
    assert section.images == [] and "no model update" in (section.empty_reason or "")
