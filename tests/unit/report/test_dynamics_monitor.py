"""Learning dynamics and the consistency monitor's figure, from job and score records."""

from __future__ import annotations

import json

import pytest

from dmha.report import JobRecord, ScoreRecord, VersionRecord, consistency_section, learning_dynamics
from dmha.report.dynamics import rows_from_versions
from tests.unit.report.report_checks import header, png_size, rows

PLAN = {"lambda_causal": 0.5, "lambda_locality": 1.0, "learning_rate": 0.01, "scale": 1.0}
GATE = {"efficacy": 1.0, "generalisation": 0.83, "retention": 1.0, "locality": 0.999, "kl_mean": 0.002}


def jobs() -> list[JobRecord]:
    return [
        JobRecord("j1", "deployed", 100.0, 340.0, GATE, PLAN, "v1"),
        JobRecord("j2", "rejected", 400.0, 600.0, {**GATE, "efficacy": 0.0}, PLAN, "", "efficacy 0.000 < 0.990"),
        JobRecord("j3", "deployed", 700.0, 900.0, GATE, {**PLAN, "learning_rate": 0.02}, "v2"),
        JobRecord("j4", "candidate", 950.0, 950.0),  # never trained: not an update
    ]


def test_dynamics_rows_states_and_submit_to_live(tmp_path):
    section = learning_dynamics(jobs(), tmp_path, {"efficacy": 0.99})
    assert png_size(tmp_path / "learning_dynamics.png") == (1045, 935)
    table = rows(tmp_path / "learning_dynamics.csv")
    assert header(tmp_path / "learning_dynamics.csv")[:7] == [
        "job_id",
        "created_at",
        "state",
        "version",
        "lambda_causal",
        "lambda_locality",
        "theta",
    ]
    assert [r["state"] for r in table] == ["deployed", "rejected", "deployed"]
    assert [r["submit_to_live_s"] for r in table] == ["240", "", "200"]
    assert [float(r["theta"]) for r in table] == [0.01, 0.01, 0.02]
    stat = json.loads((tmp_path / "learning_stat.json").read_text())
    assert stat["deploy_rate"] == pytest.approx(2 / 3) and stat["submit_to_live_p50_s"] == 220
    assert stat["plans_vary"] is True
    assert "2 of 3" in section.finding and "efficacy 0.000" in section.finding


def test_versions_stand_in_for_jobs():
    versions = [
        VersionRecord("base", None, 0.0, "base"),
        VersionRecord("v1", "base", 500.0, "accepted", True, {"total_seconds": 120.0}, PLAN),
    ]
    (row,) = rows_from_versions(versions)
    assert row.state == "deployed" and row.updated_at - row.created_at == 120.0


def test_no_update_is_an_empty_section(tmp_path):
    assert learning_dynamics(jobs()[3:], tmp_path).empty_reason


def test_monitor_scores_threshold_and_firings(tmp_path):
    scores = [
        ScoreRecord("t1", "s", 10.0, 0.1, {"low_confidence": 0.6}),
        ScoreRecord(
            "t2", "s", 20.0, 0.85, {"kb_contradiction": 1.0}, True, "corrected", ("regenerated_with_constraints:1",)
        ),
        ScoreRecord("t3", "s", 30.0, 0.2, {"memory_disagreement": 1.0}),
        ScoreRecord("t4", "s", 40.0, 0.7, {"kb_contradiction": 1.0}, True, "answered_from_kb"),
    ]
    section = consistency_section(list(reversed(scores)), 0.5, tmp_path)  # sorted by time inside
    assert png_size(tmp_path / "monitor_scores.png") == (990, 660)
    table = rows(tmp_path / "monitor_scores.csv")
    assert [r["turn_id"] for r in table] == ["t1", "t2", "t3", "t4"]
    assert [r["fired"] for r in table] == ["0", "1", "0", "1"]
    assert table[1]["actions"] == "regenerated_with_constraints:1"
    stat = json.loads((tmp_path / "monitor_stat.json").read_text())
    assert stat["fired"] == 2 and stat["outcomes"] == {"answered_from_kb": 1, "corrected": 1}
    assert "2 of 4" in section.finding and "kb contradiction" in section.finding


def test_monitor_that_never_fired_and_no_scores(tmp_path):
    calm = consistency_section([ScoreRecord("t1", "s", 1.0, 0.2)], 0.5, tmp_path)
    assert "never fired" in calm.finding
    assert consistency_section([], 0.5, tmp_path).empty_reason


def test_the_meta_learners_records_give_what_each_job_trained_with(tmp_path):
    from dmha.report import AttemptRecord, attempts_from

    records = [  # as the meta store writes them: a rejected first try repaired once, then deployed
        {"job_id": "j1", "attempt": 0, "outcome": "rejected", "reward": -1.0, "repair": "",
         "figures": {"lambda_causal": 0.5, "lambda_locality": 1.0, "learning_rate": 0.01}},
        {"job_id": "j1", "attempt": 1, "outcome": "deployed", "reward": 0.5, "repair": "rejected",
         "figures": {"lambda_causal": 0.25, "lambda_locality": 2.0, "learning_rate": 0.005}},
    ]  # fmt: skip
    attempts = attempts_from(records)
    assert attempts[1] == AttemptRecord("j1", 1, "deployed", 0.25, 2.0, 0.005, 0.5, "rejected")
    section = learning_dynamics(jobs()[:2], tmp_path, attempts=attempts)
    table = rows(tmp_path / "learning_dynamics.csv")
    assert [(r["lambda_causal"], r["lambda_locality"], r["theta"], r["attempts"]) for r in table] == [
        ("0.25", "2", "0.005", "2"),  # the repaired attempt's values, not the starting plan's
        ("0.5", "1", "0.01", "1"),  # no record: the job's own plan
    ]
    assert "1 update needed repairs (3 attempts in all)" in section.finding
