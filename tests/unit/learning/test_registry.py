"""Registry: atomic versions, live pointer, rollback, fallback to intact ancestors."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from dmha.errors import FailedPrecondition, NotFound
from dmha.learning import ArtifactError, FeedbackItem, Registry, UpdatePlan
from dmha.learning.registry import default_writer

ITEM = FeedbackItem("f1", "Q?", "A.")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def _stage(reg: Registry, payload: bytes = b"weights") -> Path:
    staging = reg.new_staging()
    (staging / "adapter").mkdir()
    (staging / "adapter" / "adapter_model.safetensors").write_bytes(payload)
    (staging / "frozen.pt").write_bytes(b"frozen-" + payload)
    return staging


def _commit(reg: Registry, parent: str = "base", payload: bytes = b"weights"):
    return reg.commit(_stage(reg, payload), parent, [ITEM], UpdatePlan(), {"efficacy": 1.0})


def test_commit_promote_list_get(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    assert reg.live_id == "base" and reg.live().path == base
    v1 = _commit(reg)
    assert v1.version_id == "v1" and v1.parent == "base"
    assert reg.live_id == "base"  # registering does not make it live
    reg.promote("v1")
    v2 = _commit(reg, "v1", b"more")
    reg.promote("v2")
    assert [v.version_id for v in reg.list()] == ["base", "v1", "v2"]
    got = reg.get("v2")
    assert got.feedback_ids == ("f1",) and got.plan == UpdatePlan() and got.metrics["efficacy"] == 1.0
    assert set(got.artifacts) == {"adapter/adapter_model.safetensors", "frozen"}
    assert got.frozen_path == got.path / "frozen.pt"
    assert reg.live().version_id == "v2" and v2.version_id == "v2"
    assert [f.feedback_id for f in reg.feedback_history("v2")] == ["f1", "f1"]
    assert not list((tmp_path / "registry" / "staging").iterdir())
    with pytest.raises(NotFound):
        reg.get("v9")
    with pytest.raises(NotFound):
        reg.get("../etc")


def test_rollback(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    with pytest.raises(FailedPrecondition):
        reg.rollback()
    _commit(reg)
    reg.promote("v1")
    _commit(reg, "v1")
    reg.promote("v2")
    assert reg.rollback().version_id == "v1"
    assert reg.live_id == "v1"
    assert reg.rollback(to="v2").version_id == "v2"
    assert reg.rollback(to="base").version_id == "base"
    with pytest.raises(NotFound):
        reg.rollback(to="v7")


def test_disk_full_creates_nothing_and_keeps_live(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    _commit(reg)
    reg.promote("v1")
    live_before = (tmp_path / "registry" / "live.json").read_bytes()

    def full_disk(fh, data: bytes) -> None:
        fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    failing = Registry(tmp_path / "registry", base, writer=full_disk)
    staging = _stage(failing)
    with pytest.raises(OSError) as info:
        failing.commit(staging, "v1", [ITEM], UpdatePlan(), {})
    assert info.value.errno == errno.ENOSPC
    assert not staging.exists()
    assert [v.version_id for v in reg.list()] == ["base", "v1"]
    assert (tmp_path / "registry" / "live.json").read_bytes() == live_before
    # Promoting through a full disk fails too, and leaves the old pointer whole.
    _commit(reg, "v1")
    with pytest.raises(OSError):
        failing.promote("v2")
    assert reg.live_id == "v1"
    leftovers = [p.name for p in (tmp_path / "registry").rglob("*.tmp")]
    assert leftovers == []


def test_missing_or_corrupt_artifact_falls_back_to_parent(tmp_path, base, caplog) -> None:
    reg = Registry(tmp_path / "registry", base)
    _commit(reg)
    _commit(reg, "v1", b"two")
    _commit(reg, "v2", b"three")
    reg.promote("v3")
    (reg.get("v3").path / "frozen.pt").unlink()
    with caplog.at_level(logging.ERROR, logger="dmha.learning.registry"):
        assert Registry(tmp_path / "registry", base).live().version_id == "v2"
    assert "v3" in caplog.text and "missing" in caplog.text and "falling back" in caplog.text
    # A corrupt ancestor makes its descendants unusable too (they are built on it).
    (reg.get("v1").path / "adapter" / "adapter_model.safetensors").write_bytes(b"garbage")
    fresh = Registry(tmp_path / "registry", base)
    assert fresh.resolve("v2").version_id == "base"
    with pytest.raises(ArtifactError):
        fresh.promote("v2")


def test_corrupt_records_and_pointer(tmp_path, base, caplog) -> None:
    reg = Registry(tmp_path / "registry", base)
    _commit(reg)
    reg.promote("v1")
    (tmp_path / "registry" / "live.json").write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert reg.live().version_id == "base"
    assert "corrupt" in caplog.text
    (reg.root / "versions" / "v1" / "version.json").write_text("[]")
    with pytest.raises(NotFound, match="unreadable"):
        reg.get("v1")
    assert [v.version_id for v in reg.list()] == ["base"]


def test_missing_base_is_an_artifact_error(tmp_path) -> None:
    reg = Registry(tmp_path / "registry", tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="missing"):
        reg.live()


def test_staging_leftovers_are_removed_on_start(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    staging = _stage(reg)
    Registry(tmp_path / "registry", base)
    assert not staging.exists()


def test_records_are_plain_json(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    v = _commit(reg)
    data = json.loads((v.path / "version.json").read_text())
    assert data["parent"] == "base" and data["status"] == "accepted"
    assert default_writer is not None
