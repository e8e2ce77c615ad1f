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
    (staging / "delta.safetensors").write_bytes(payload)
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
    assert set(got.artifacts) == {"delta"}
    assert got.delta_path == got.path / "delta.safetensors"
    assert got.stored_bytes == len(b"more")
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
    (reg.get("v3").path / "delta.safetensors").unlink()
    with caplog.at_level(logging.ERROR, logger="dmha.learning.registry"):
        assert Registry(tmp_path / "registry", base).live().version_id == "v2"
    assert "v3" in caplog.text and "missing" in caplog.text and "falling back" in caplog.text
    # Versions are self-contained: a corrupt ancestor does not break its descendants ...
    (reg.get("v1").path / "delta.safetensors").write_bytes(b"garbage")
    fresh = Registry(tmp_path / "registry", base)
    assert fresh.resolve("v2").version_id == "v2"
    # ... but it cannot be served itself.
    assert fresh.resolve("v1").version_id == "base"
    with pytest.raises(ArtifactError, match="corrupt"):
        fresh.promote("v1")


def test_retention_keeps_live_ancestors_and_last(tmp_path, base) -> None:
    reg = Registry(tmp_path / "registry", base)
    parent = "base"
    for i in range(1, 9):
        parent = _commit(reg, parent, f"w{i}".encode()).version_id
    reg.promote("v5")
    frozen = reg.frozen_cache("v5")
    frozen.parent.mkdir(parents=True)
    frozen.write_bytes(b"module")
    reg.frozen_cache("v3").write_bytes(b"stale")
    # Modules being written: the live version's survives a prune, another's does not.
    writing, superseded = reg.frozen_cache(".v5"), reg.frozen_cache(".v4")
    writing.write_bytes(b"half")
    superseded.write_bytes(b"half")
    pruned = reg.prune(keep_ancestors=2, keep_last=2)
    # Kept: live v5, its ancestors v4 and v3, and the newest v7 and v8.
    assert pruned == ["v1", "v2", "v6"]
    statuses = {v.version_id: v.status for v in reg.list()}
    assert statuses == {
        "base": "base",
        "v1": "pruned",
        "v2": "pruned",
        "v3": "accepted",
        "v4": "accepted",
        "v5": "accepted",
        "v6": "pruned",
        "v7": "accepted",
        "v8": "accepted",
    }
    assert reg.get("v1").stored_bytes == 0 and not (reg.get("v1").path / "delta.safetensors").exists()
    # Records stay: the feedback history through pruned versions is intact.
    assert len(reg.feedback_history("v8")) == 8
    # Only the live version's frozen module is kept.
    assert frozen.is_file() and not reg.frozen_cache("v3").exists()
    assert writing.is_file() and not superseded.exists()
    # Rollback works to any retained version, and a pruned one is refused clearly.
    assert reg.rollback().version_id == "v4"
    reg.promote("v8")
    with pytest.raises(FailedPrecondition, match="pruned"):
        reg.promote("v2")
    # With v8 live, v3-v5 are neither its ancestors nor among the newest.
    assert reg.prune(keep_ancestors=2, keep_last=2) == ["v3", "v4", "v5"]
    assert reg.prune(keep_ancestors=2, keep_last=2) == []  # idempotent
    assert Registry(tmp_path / "registry", base).resolve("v6").version_id == "base"


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
