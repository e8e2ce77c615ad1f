"""MetaStore shared by several processes (``dmha worker`` scale-out on one registry).

Real processes (spawned, so each has its own interpreter, store object and lock file
descriptor) append records, add learner versions, update Φ and import insights at the
same time; nothing one of them wrote may be lost and every file must stay valid.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import torch

from dmha.learning.meta.learner import MetaCausalLearner
from dmha.learning.meta.reptile import MetaInit
from dmha.learning.meta.state import FEATURES, UpdateState
from dmha.learning.meta.store import LearnerVersion, MetaRecord, MetaStore

WORKERS = 4
RECORDS = 50
VERSIONS = 5
IMPORTED = 20


def _record(job: str) -> MetaRecord:
    return MetaRecord(
        job,
        0,
        f"question {job}",
        UpdateState(dict.fromkeys(FEATURES, 0.0), (4, 5)).to_dict(),
        {"d_causal": 0.0, "d_locality": 0.0, "d_theta": 0.1},
        [1.0, 0.5],
        "deployed",
        0.0,
        {"steps": 10.0},
        {"4": 1.0},
    )


def _work(root: str, worker: int, barrier: Any, doc: dict[str, Any] | None) -> None:
    torch.set_num_threads(1)
    store = MetaStore(Path(root))
    learner = MetaCausalLearner()
    barrier.wait()  # start together, so the writes really overlap
    for i in range(RECORDS):
        store.append(_record(f"w{worker}-{i}"))
        if i % (RECORDS // VERSIONS) == 0:
            info = LearnerVersion(store.next_version(), 0.0, i, {"d_theta": float(worker)}, 1.0, 0.0)
            store.save_learner(learner, info)
            factors = {0: {"a": torch.full((2, 2), float(worker)), "b": torch.zeros(2, 2)}}
            store.update_init("reptile", 0.5, factors)
        if doc is not None and i == RECORDS // 2:
            store.import_insights(doc)


def test_concurrent_processes_lose_no_record_version_or_init_update(tmp_path: Path) -> None:
    source = MetaStore(tmp_path / "source")
    for i in range(IMPORTED):
        source.append(_record(f"imported-{i}"))
    doc = json.loads(json.dumps(source.insights()))
    root = tmp_path / "shared"
    MetaStore(root)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_work, args=(str(root), w, barrier, doc if w == 0 else None)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    store = MetaStore(root)
    lines = (root / "records.jsonl").read_text(encoding="utf-8").splitlines()
    jobs = [json.loads(line)["job_id"] for line in lines]  # every line is whole JSON
    expected = {f"w{w}-{i}" for w in range(WORKERS) for i in range(RECORDS)}
    expected |= {f"imported-{i}" for i in range(IMPORTED)}
    assert len(jobs) == len(expected) and set(jobs) == expected
    assert [r.job_id for r in store.records()] == jobs

    versions = json.loads((root / "versions.json").read_text(encoding="utf-8"))
    names = [v["version"] for v in versions]
    assert names == [f"m{n:04d}" for n in range(1, WORKERS * VERSIONS + 1)]
    assert sorted(v["deltas"]["d_theta"] for v in versions) == sorted(
        float(w) for w in range(WORKERS) for _ in range(VERSIONS)
    )
    for name in names:
        weights = torch.load(root / "learner" / f"{name}.pt", map_location="cpu", weights_only=True)
        assert weights.keys() == MetaCausalLearner().state_dict().keys()
    _, live = store.load_learner()
    assert live == names[-1]

    init = MetaInit.load(store.init_path, "reptile", 0.5)
    assert init.updates == WORKERS * VERSIONS  # every process's Φ update was built on, none overwritten
    assert not list(root.glob(".*.tmp"))


def test_a_taken_version_id_moves_to_the_next_free_one(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    learner = MetaCausalLearner()
    first = store.next_version()
    # Two trainers chose the same id before either stored its learner.
    a = store.save_learner(learner, LearnerVersion(first, 0.0, 6, {}, 1.0, 0.0))
    b = store.save_learner(learner, LearnerVersion(first, 0.0, 7, {}, 1.0, 0.0))
    assert (a.version, b.version) == ("m0001", "m0002")
    assert [v.records for v in store.versions()] == [6, 7]
    assert store.load_learner()[1] == "m0002"


def test_init_updates_read_what_another_store_wrote(tmp_path: Path) -> None:
    one, two = MetaStore(tmp_path), MetaStore(tmp_path)
    one.update_init("reptile", 0.5, {0: {"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}})
    phi = two.update_init("reptile", 0.5, {0: {"a": torch.ones(2, 2), "b": torch.zeros(2, 2)}})
    assert phi.updates == 2
    assert torch.allclose(phi.phi[0]["a"], torch.full((2, 2), 0.5))  # built on the first update
