"""The reproducibility table: the benchmark's facts, mean and σ over seeds, the 1.5-point flag."""

from __future__ import annotations

import json

import pytest

from dmha.report import FactOutcome, SeedRun, make_facts, reproducibility_section, tabulate
from tests.unit.report.report_checks import png_size, rows


def test_facts_are_the_benchmarks_seeded_ones():
    facts = make_facts(3, 0)
    assert facts == make_facts(3, 0) and facts != make_facts(3, 1)
    assert make_facts(5, 0)[:3] == facts  # "the first K facts" do not depend on K
    for f in facts:
        assert f["subject"] in f["input"] and f["key"] in f["target"]


def run(seed: int, generalisation: float, deployed: bool = True) -> SeedRun:
    m = {"efficacy": 1.0, "generalisation": generalisation, "locality": 0.999, "kl_mean": 0.002}
    state = "deployed" if deployed else "rejected"
    return SeedRun(seed, [FactOutcome("Q?", state, m, True if deployed else None, 100.0 + seed)])


def test_table_means_sigmas_and_flags():
    table = {r["metric"]: r for r in tabulate([run(0, 0.80), run(1, 0.90), run(2, 0.85)])}
    gen = table["generalisation"]
    assert gen["values"] == pytest.approx([80.0, 90.0, 85.0]) and gen["mean"] == pytest.approx(85.0)
    assert gen["std"] == pytest.approx(5.0) and gen["flagged"]
    assert table["efficacy"]["std"] == 0 and not table["efficacy"]["flagged"]
    assert table["submit_to_live_s"]["unit"] == "s" and not table["submit_to_live_s"]["flagged"]
    assert table["kl_mean"]["unit"] == "nats"


def test_section_writes_the_log(tmp_path):
    runs = [run(0, 0.8), run(1, 0.8, deployed=False)]
    meta = {"facts": 1, "config_sha256": "abc", "versions": {"torch": "x"}}
    section = reproducibility_section(runs, meta, tmp_path)
    assert png_size(tmp_path / "reproducibility.png") == (1210, 550)
    table = {r["metric"]: r for r in rows(tmp_path / "reproducibility.csv")}
    assert table["deploy_rate"]["mean"] == "50" and table["deploy_rate"]["flagged"] == "1"
    log = json.loads((tmp_path / "reproducibility_log.json").read_text())
    assert log["seeds"] == [0, 1] and log["config_sha256"] == "abc" and len(log["runs"]) == 2
    assert "deploy_rate" in section.finding and section.stats["flagged"]
    assert reproducibility_section([], {}, tmp_path).empty_reason
