"""``dmha report --reproduce``: fresh servers (real ``dmha serve`` processes) teach the benchmark's facts per seed."""

from __future__ import annotations

import json

import pytest

from dmha.report import make_facts, reproducibility_section
from dmha_server.reproduce import config_hash, reproduce
from tests.integration.conftest import integration_config
from tests.integration.report.test_report_command import RELAXED

# Two `dmha serve` processes start and train: minutes on 2 cores, so in the slow tier.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_seeds_one_fact(tmp_path, tiny_model_dir):
    cfg = integration_config(tmp_path / "data", tiny_model_dir, learning=RELAXED)
    lines: list[str] = []
    runs, meta = reproduce(cfg, tiny_model_dir, seeds=2, facts=1, say=lines.append)
    assert [r.seed for r in runs] == [0, 1]
    (question,) = meta["questions"]
    assert question == make_facts(1, 0)[0]["input"]
    for run in runs:
        (fact,) = run.facts
        assert fact.state == "deployed" and fact.chat_knows is not None and fact.submit_to_live_s > 0
        assert "efficacy" in fact.metrics
    assert meta["config_sha256"] == config_hash(cfg) and meta["versions"]["model"] == tiny_model_dir.name
    assert sum("fact 1/1: deployed" in line for line in lines) == 2

    section = reproducibility_section(runs, meta, tmp_path)
    log = json.loads((tmp_path / "reproducibility_log.json").read_text())
    assert log["seeds"] == [0, 1] and log["config_sha256"] == meta["config_sha256"]
    deploy = next(r for r in log["table"] if r["metric"] == "deploy_rate")
    assert deploy["mean"] == 100.0 and deploy["std"] == 0.0 and not deploy["flagged"]
    assert section.images == ["reproducibility.png"]
