"""``dmha report`` end to end: a scripted conversation on a real server, then the report.

Real Redis, Milvus Lite, MiniLM embeddings, gRPC and the tiny model; one feedback is
trained and deployed (relaxed gate: the tiny model cannot pass real thresholds).
The report is made online (through the SDK, while the server runs) and offline
(from the data folder, after it stopped), and every section must have its figure.
"""

from __future__ import annotations

import asyncio
import csv
import json
import struct
from pathlib import Path

import pytest

from dmha.runtime import render_yaml
from dmha_cli.main import main
from tests.integration.conftest import RELAXED_LEARNING, integration_config, start_live_server

pytestmark = pytest.mark.integration

RELAXED = {**RELAXED_LEARNING, "freeze": False}
MESSAGES = [
    "My dog Pepper loves chasing the ball in the park.",
    "Pepper the beagle barked at the mailman again today.",
    "I walked my dog Pepper along the river this morning.",
    "Pepper chewed my slippers, silly dog.",
    "I baked sourdough bread with a crunchy crust.",
    "The sourdough starter needs flour and water every day.",
    "My bread recipe uses rye flour and sea salt.",
    "I baked a second sourdough loaf for my neighbour.",
    "Where does Bob live? Tell me about my dog too.",
]
STATEMENTS = (
    "fact: bob.city = paris\n"
    "fact: bob.age = 30\n"
    "fact: bob.quiet = true\n"
    "fact: bob.cold = true\n"
    "rule: smart_rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true\n"
    "fact: alice.friend = bob"
)
IMAGES = {
    "attention_heatmap.png",
    "z_tsne.png",
    "lattice_graph.png",
    "degree_dist.png",
    "utility_map.png",
    "learning_dynamics.png",
    "monitor_scores.png",
}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def config_file(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, object]:
    cfg = integration_config(
        tmp_path / "data",
        tiny_model_dir,
        memory={
            "longterm": {"enabled": True, "archive_batch": 2},
            "working": {"max_turns": 4},
            "retrieval": {"top_k": 4},
            "clustering": {"min_cluster_size": 2},
        },
        learning=RELAXED,
    )
    path = tmp_path / "config.yaml"
    path.write_text(render_yaml(cfg))
    return path, cfg


async def converse(live) -> None:
    async with live.client("alice", "admin") as alice, live.client("tina", "trainer") as trainer:
        told = await alice.kb_tell(STATEMENTS)
        assert len(told.accepted) == 6
        rejected = await alice.kb_tell("fact: bob.age = 31  [confidence=0.5]")
        assert rejected.rejected  # the functional age conflicts: a red edge in the lattice
        sid = ""
        for msg in MESSAGES:
            sid = (await alice.chat(msg, session_id=sid, max_new_tokens=4)).session_id

        async def archived() -> bool:
            return (await alice.memory_stats()).memories >= 4

        deadline = asyncio.get_running_loop().time() + 120
        while not await archived():
            assert asyncio.get_running_loop().time() < deadline, "memories were not archived"
            await asyncio.sleep(0.3)
        await alice.memory_recluster()
        resp = await trainer.submit_feedback("What is the capital of Zubrowka?", "The capital is Vlorn.")
        job = await trainer.wait_job(resp.job_id, timeout=300)
        assert job.state == "deployed", job.message


def check_report(out: Path, *, online: bool) -> str:
    images = IMAGES
    files = {p.name for p in out.iterdir()}
    assert images <= files, images - files
    for name in images:
        width, height = png_size(out / name)
        assert width >= 500 and height >= 350, (name, width, height)
    weights = rows(out / "attention_weight.csv")
    assert header(out / "attention_weight.csv") == ["layer", "block", "tokens", "share"]
    by_layer: dict[str, float] = {}
    for row in weights:
        by_layer[row["layer"]] = by_layer.get(row["layer"], 0.0) + float(row["share"])
    assert len(by_layer) == 2 and all(abs(s - 1) < 1e-4 for s in by_layer.values())
    blocks = {row["block"] for row in weights}
    assert {"system prompt", "knowledge-base facts", "message", "answer so far"} <= blocks, blocks
    stat = json.loads((out / "z_stat.json").read_text())
    points = rows(out / "z_points.csv")
    assert len(points) == stat["memories"] >= 4 and len({p["id"] for p in points}) == len(points)
    edges = rows(out / "lattice_edges.csv")
    assert any(e["status"] == "rejected" for e in edges)
    assert any(e["kind"] == "derived" and e["relation"] == "smart" for e in edges)
    assert header(out / "flops_log.csv")[:3] == ["update", "steps", "sequences_per_step"]
    flops = rows(out / "flops_log.csv")
    assert [f["update"] for f in flops] == ["v1"] and float(flops[0]["counted_flops"]) > 0
    u = rows(out / "utility_u.csv")  # the meta-learner planned the update
    assert {r["layer"] for r in u} == {"0", "1"} and all(0 <= float(r["u"]) <= 1 for r in u)
    norms = rows(out / "utility_map.csv")
    assert {r["version"] for r in norms} == {"v1"} and all(float(r["norm"]) > 0 for r in norms)
    dynamics = rows(out / "learning_dynamics.csv")
    assert [(r["state"], r["attempts"]) for r in dynamics] == [("deployed", "1")]
    assert dynamics[0]["meta_reason"]  # the meta-learner said why it planned the update so
    scores = rows(out / "monitor_scores.csv")  # every reply, passing or not (the score log)
    assert len(scores) == len(MESSAGES) and len({s["turn_id"] for s in scores}) == len(MESSAGES)
    summary = (out / "summary.md").read_text()
    for name in images:
        assert f"]({name})" in summary
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(images)
    assert "No figure: no reproduction was run" in page
    return summary


async def test_report_online_then_offline(tmp_path, tiny_model_dir):
    config, cfg = config_file(tmp_path, tiny_model_dir)
    online, offline = tmp_path / "online", tmp_path / "offline"
    async for live in start_live_server(cfg):
        await converse(live)
        # An admin reports on alice: the command mints her token with the local admin API key.
        argv = ["report", "--config", str(config), "--data-dir", str(cfg.data_dir), "--out", str(online)]
        argv += ["--address", live.address, "--user", "alice"]
        assert await asyncio.to_thread(main, argv) == 0
        # Offline while the server runs would start a second Redis on its files: refused.
        busy = ["report", "--config", str(config), "--data-dir", str(cfg.data_dir), "--out", str(tmp_path / "x")]
        assert await asyncio.to_thread(main, [*busy, "--user", "alice", "--no-attention"]) == 1
        assert not (tmp_path / "x").exists()
    summary = check_report(online, online=True)
    assert "through the SDK" in summary

    base = ["report", "--config", str(config), "--data-dir", str(cfg.data_dir), "--user", "alice", "--seed", "3"]
    assert main([*base, "--out", str(offline)]) == 0
    check_report(offline, online=False)
    # Deterministic for a fixed seed: a second run writes the same figures and data.
    again = tmp_path / "again"
    assert main([*base, "--out", str(again)]) == 0
    for f in sorted(offline.iterdir()):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name
