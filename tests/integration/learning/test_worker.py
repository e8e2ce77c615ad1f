"""The learning worker end to end on the tiny model, with a real Redis."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dmha.config import LearningConfig, RedisConfig
from dmha.learning import (
    EagerStepModel,
    FeedbackItem,
    JobStore,
    LearningWorker,
    Registry,
    load_version,
    verify_step_model,
)
from dmha.learning.meta.controller import MetaController
from dmha.learning.meta.store import MetaStore
from dmha.llm.base import ModelHandle
from dmha.redis_connection import RedisConnection
from tests.integration.conftest import RELAXED_LEARNING
from tests.live_model import Live

pytestmark = pytest.mark.integration

TINY_MODELS = Path(__file__).parents[2] / "unit" / "learning" / "tiny_models.py"
ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")
# The tiny random model cannot meet real thresholds; these tests are about plumbing.
# (LearningConfig here, not the server's tree: no ``enabled``.)
RELAXED = {
    **{k: v for k, v in RELAXED_LEARNING.items() if k != "enabled"},
    "steps": 3,
    "learning_rate": 1e-2,
    "freeze_tolerance": 1e-4,
}


@pytest.fixture
def conn(tmp_path) -> Iterator[RedisConnection]:
    c = RedisConnection(RedisConfig(), tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def base_dir(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    path = tmp_path / "base-model"
    tiny_model.save_pretrained(str(path))
    tiny_tokenizer.save_pretrained(str(path))
    return path


def _run(worker: LearningWorker, store: JobStore, job_id: str, timeout: float = 120) -> Any:
    worker.start()
    try:
        for event in store.watch(job_id, timeout=timeout, block_ms=200):
            if event.terminal:
                break
    finally:
        worker.stop()
    return store.get(job_id)


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_worker_process_deploys_a_version_already_frozen(
    tmp_path, conn, base_dir, tiny_model, tiny_tokenizer
) -> None:
    # Role ``worker``: replicas load each new version from the registry, so the frozen
    # module must be there when the pointer moves (one swap, already frozen).
    live = Live(tiny_model, tiny_tokenizer)
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    cached_at_deploy: list[bool] = []

    def deploy(handle: ModelHandle) -> None:
        cached_at_deploy.append(registry.frozen_cache(handle.version).is_file())
        live.deploy(handle)

    worker = LearningWorker(
        LearningConfig(**RELAXED, role="worker"),
        store,
        registry,
        live.get,
        deploy,
        system_prompt="You are DMHA.",
        cache_dir=tmp_path / "cache",
    )
    done = _run(worker, store, store.submit([ITEM], "alice").job_id)
    assert done.state == "deployed", done.error
    assert [(h.version, h.kind) for h in live.deployed] == [("v1", "frozen")]
    assert cached_at_deploy == [True]


def test_feedback_becomes_a_frozen_live_version(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    before = _state(tiny_model)
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    worker = LearningWorker(
        LearningConfig(**RELAXED),
        store,
        registry,
        live.get,
        live.deploy,
        system_prompt="You are DMHA.",
        cache_dir=tmp_path / "cache",
    )
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)

    assert done.state == "deployed", done.error
    assert done.version == "v1" and registry.live_id == "v1"
    assert "efficacy" in done.metrics
    # Live at once on the eager weights, then the same version frozen and swapped in.
    assert [(h.version, h.kind) for h in live.deployed] == [("v1", "eager"), ("v1", "frozen")]
    new = live.deployed[1]
    assert new.torch_model is live.deployed[0].torch_model and new.torch_model is not tiny_model
    assert all(torch.equal(before[k], v) for k, v in _state(tiny_model).items())
    # The frozen module serves the same logits as the merged eager model.
    assert verify_step_model(new.step_model, EagerStepModel(new.torch_model), len(tiny_tokenizer)) < 1e-4
    # The version stores a delta of the edited matrices, not a copy of the model.
    v1 = registry.get("v1")
    assert set(v1.artifacts) == {"delta"} and done.metrics["stored_bytes"] == v1.stored_bytes
    assert registry.frozen_cache("v1").is_file()
    # A restart rebuilds exactly that version from the base folder + delta.
    fresh_base = type(tiny_model).from_pretrained(str(base_dir))
    loaded = load_version(Registry(tmp_path / "registry", base_dir), fresh_base, device="cpu")
    assert loaded.version.version_id == "v1" and loaded.kind == "frozen"
    merged = new.torch_model.state_dict()
    assert all(torch.equal(merged[k], v) for k, v in loaded.model.state_dict().items())
    # The second update replays the first one's feedback.
    second = store.submit([FeedbackItem("f2", "Who wrote the book?", "A cat.")], "alice")
    again = _run(worker, store, second.job_id)
    assert again.state == "deployed" and again.version == "v2"
    assert again.metrics["n_replayed"] == 1.0
    assert registry.get("v2").parent == "v1"
    # Only the live version keeps a frozen module; the v2 delta is cumulative (v1's included).
    assert registry.frozen_cache("v2").is_file() and not registry.frozen_cache("v1").exists()
    fresh_base = type(tiny_model).from_pretrained(str(base_dir))
    rebuilt = load_version(registry, fresh_base, "v2", device="cpu", use_frozen=False).model.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in live.handle.torch_model.state_dict().items())


def test_retention_prunes_and_rollback_rebuilds(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    cfg = LearningConfig(**{**RELAXED, "keep_ancestors": 1, "keep_last": 1, "freeze": False})
    worker = LearningWorker(
        cfg, store, registry, live.get, live.deploy, system_prompt="You are DMHA.", cache_dir=tmp_path / "cache"
    )
    states = {}
    for i in range(4):
        job = store.submit([FeedbackItem(f"f{i}", f"Who wrote book {i}?", f"Author {i}.")], "alice")
        assert _run(worker, store, job.job_id).state == "deployed"
        states[f"v{i + 1}"] = _state(live.handle.torch_model)
    statuses = {v.version_id: v.status for v in registry.list()}
    assert statuses == {"base": "base", "v1": "pruned", "v2": "pruned", "v3": "accepted", "v4": "accepted"}
    assert not (registry.get("v1").path / "delta.safetensors").exists()
    # Rolling back to the retained parent rebuilds it bitwise from base + its delta.
    fresh = type(tiny_model).from_pretrained(str(base_dir))
    rebuilt = load_version(registry, fresh, "v3", device="cpu", use_frozen=False)
    assert rebuilt.version.version_id == "v3"
    assert all(torch.equal(states["v3"][k], v) for k, v in rebuilt.model.state_dict().items())


def test_divergence_fails_the_job_and_touches_nothing(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    before = _state(tiny_model)
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    cfg = LearningConfig(**{**RELAXED, "learning_rate": 1e30, "steps": 6})
    worker = LearningWorker(
        cfg, store, registry, live.get, live.deploy, system_prompt="You are DMHA.", cache_dir=tmp_path / "cache"
    )
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "failed" and "diverged" in done.error
    assert live.deployed == [] and registry.live_id == "base"
    assert [v.version_id for v in registry.list()] == ["base"]
    assert not list((tmp_path / "registry" / "staging").iterdir())
    assert all(torch.equal(before[k], v) for k, v in _state(tiny_model).items())


def test_gate_rejection_registers_nothing(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    cfg = LearningConfig(**{**RELAXED, "min_efficacy": 1.0, "steps": 1, "learning_rate": 1e-6})
    worker = LearningWorker(
        cfg, store, registry, live.get, live.deploy, system_prompt="You are DMHA.", cache_dir=tmp_path / "cache"
    )
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "rejected" and any(r.startswith("efficacy") for r in done.reasons)
    assert live.deployed == [] and registry.live_id == "base"
    assert not list((tmp_path / "registry" / "staging").iterdir())


def test_kill_9_during_training_leaves_live_untouched(tmp_path, conn, base_dir) -> None:
    """A worker process is SIGKILLed mid-training; a restart finds everything consistent."""
    socket = conn.client.connection_pool.connection_kwargs["path"]
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, time, torch
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location("tiny", {str(TINY_MODELS)!r})
        tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)
        from dmha.config import LearningConfig, RedisConfig
        from dmha.learning import EagerStepModel, JobStore, LearningWorker, Registry
        from dmha.llm.base import ModelHandle
        from dmha.redis_connection import RedisConnection
        tok = tiny.build_tokenizer(); model = tiny.build_model(len(tok))
        handle = ModelHandle("base", tok, EagerStepModel(model), 512, frozenset({{2}}), torch_model=model)
        conn = RedisConnection(RedisConfig(url="unix://{socket}"), {str(tmp_path / "child")!r})
        cfg = LearningConfig(steps=100000, learning_rate=1e-4, freeze_device="cpu", edit_layers=[0, 1],
                             min_key_share=0.0, null_threshold=0.5, stop_margin=0.0, max_train_seconds=600)
        worker = LearningWorker(cfg, JobStore(conn), Registry({str(tmp_path / "registry")!r}, {str(base_dir)!r}),
                                lambda: handle, lambda h: sys.exit("deployed?!"), system_prompt="You are DMHA.",
                                cache_dir={str(tmp_path / "cache")!r})
        worker.start()
        time.sleep(600)
        """
    )
    store = JobStore(conn)
    job = store.submit([ITEM], "alice")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and store.get(job.job_id).step < 2:
            assert proc.poll() is None, "worker process died on its own"
            time.sleep(0.2)
        assert store.get(job.job_id).state == "training"
        staging = list((tmp_path / "registry" / "staging").iterdir())
        assert staging  # the update was writing its artifacts there
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    registry = Registry(tmp_path / "registry", base_dir)  # the restart
    assert registry.live_id == "base" and [v.version_id for v in registry.list()] == ["base"]
    assert not list((tmp_path / "registry" / "staging").iterdir())
    assert store.recover() == ([], [job.job_id])
    assert "interrupted while training" in store.get(job.job_id).error
    assert copy.copy(registry.live()).version_id == "base"


def _meta_worker(tmp_path, conn, base_dir, live, cfg, plan_for=None) -> tuple[LearningWorker, JobStore, Registry]:
    store = JobStore(conn)
    registry = Registry(tmp_path / "registry", base_dir)
    meta = MetaController(cfg.meta, registry.root / "meta", log_dir=tmp_path / "tb")
    worker = LearningWorker(
        cfg,
        store,
        registry,
        live.get,
        live.deploy,
        system_prompt="You are DMHA.",
        cache_dir=tmp_path / "cache",
        plan_for=plan_for,
        meta=meta,
    )
    return worker, store, registry


def test_a_diverging_plan_is_repaired_and_deployed(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    # Fault injection: the first plan's learning rate is x1e30. Repair mode resets θ to
    # the fixed plan's (halved), turns every module on and retries; live waits for a pass.
    live = Live(tiny_model, tiny_tokenizer)
    cfg = LearningConfig(**RELAXED)
    worker, store, registry = _meta_worker(
        tmp_path, conn, base_dir, live, cfg, plan_for=lambda job, plan: plan.with_changes(learning_rate=1e28)
    )
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "deployed", done.error
    assert done.plan["extra"]["repair"] == 1 and done.plan["learning_rate"] == pytest.approx(5e-3)
    records = MetaStore(registry.root / "meta").records()
    assert [(r.attempt, r.outcome) for r in records] == [(0, "failed"), (1, "deployed")]
    assert "diverged" in records[1].repair or "loss" in records[1].repair
    assert records[1].reward > records[0].reward
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())  # TensorBoard events


def test_exhausted_repairs_fail_with_every_attempt_and_touch_nothing(
    tmp_path, conn, base_dir, tiny_model, tiny_tokenizer
) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    before = _state(tiny_model)
    cfg = LearningConfig(**{**RELAXED, "learning_rate": 1e30, "steps": 6})
    worker, store, registry = _meta_worker(tmp_path, conn, base_dir, live, cfg)
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "failed"
    assert "attempt 1" in done.error and "attempt 3" in done.error and "repaired" in done.error
    assert live.deployed == [] and registry.live_id == "base"
    assert not list((tmp_path / "registry" / "staging").iterdir())
    assert all(torch.equal(before[k], v) for k, v in _state(tiny_model).items())
    assert len(MetaStore(registry.root / "meta").records()) == 3


def test_a_rejected_edit_is_retried_then_rejected_with_each_attempts_figures(
    tmp_path, conn, base_dir, tiny_model, tiny_tokenizer
) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    cfg = LearningConfig(**{**RELAXED, "min_efficacy": 1.0, "steps": 1, "learning_rate": 1e-7})
    worker, store, registry = _meta_worker(tmp_path, conn, base_dir, live, cfg)
    job = store.submit([ITEM], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "rejected"
    assert "attempt1/efficacy" in done.metrics and "attempt2/efficacy" in done.metrics
    assert any("repaired" in r and "learning_rate" in r for r in done.reasons)
    assert live.deployed == [] and registry.live_id == "base"


def test_the_learner_trains_once_enough_updates_are_recorded(
    tmp_path, conn, base_dir, tiny_model, tiny_tokenizer
) -> None:
    live = Live(tiny_model, tiny_tokenizer)
    cfg = LearningConfig(**{**RELAXED, "freeze": False, "meta": {"min_records": 2, "train_epochs": 5}})
    worker, store, registry = _meta_worker(tmp_path, conn, base_dir, live, cfg)
    for i in range(2):
        job = store.submit([FeedbackItem(f"f{i}", f"Who wrote book {i}?", f"Author {i}.")], "alice")
        assert _run(worker, store, job.job_id).state == "deployed"
    meta = MetaStore(registry.root / "meta")
    assert [v.version for v in meta.versions()] == ["m0001"]
    assert meta.init_path.is_file()  # Reptile moved Φ towards the accepted edits
    # The next update is planned by the trained learner, and its plan records why.
    job = store.submit([FeedbackItem("f9", "Who wrote book 9?", "Author 9.")], "alice")
    done = _run(worker, store, job.job_id)
    assert done.state == "deployed"
    assert "reason" in registry.get(done.version).plan.extra["meta"]


def test_a_deployed_job_already_has_its_meta_record(tmp_path, conn, base_dir, tiny_model, tiny_tokenizer) -> None:
    # Whoever sees the job deployed (a trainer's `--wait`, the insights RPC) must find
    # the meta-learner's record of it: it is written before the job turns deployed.
    live = Live(tiny_model, tiny_tokenizer)
    cfg = LearningConfig(**{**RELAXED, "freeze": False})
    worker, store, registry = _meta_worker(tmp_path, conn, base_dir, live, cfg)
    job = store.submit([ITEM], "alice")
    worker.start()
    try:
        for event in store.watch(job.job_id, timeout=120, block_ms=20):
            if event.terminal:
                records = MetaStore(registry.root / "meta").records()  # the worker is still running
                break
    finally:
        worker.stop()
    assert store.get(job.job_id).state == "deployed"
    assert [(r.job_id, r.outcome) for r in records] == [(job.job_id, "deployed")]
