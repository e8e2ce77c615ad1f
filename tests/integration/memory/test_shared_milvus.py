"""Several stores (as several processes would) over one ``milvus-lite server``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

from dmha.config import LongTermConfig
from dmha.memory.records import MemoryRecord
from dmha.memory.store import MilvusLongTermStore
from tests.integration.milvus_server import MilvusLiteServer, start_milvus_lite

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MilvusLiteServer]:
    running = start_milvus_lite(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _record(user: str, text: str, seed: int) -> MemoryRecord:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return MemoryRecord(f"m{seed}", user, "s1", "fact", text, time.time(), vector=vector)


def test_a_store_that_lost_the_create_race_opens_the_winners_collection(
    server: MilvusLiteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LongTermConfig(uri=server.uri, timeout_seconds=10)
    first = MilvusLongTermStore(cfg, tmp_path / "a", 384)
    # The second checked before the first created the collection, then tries to create it.
    real = MilvusClient.has_collection
    checks: list[bool] = []

    def not_yet(self: MilvusClient, *args: object, **kwargs: object) -> bool:
        checks.append(True)
        return False if len(checks) == 1 else bool(real(self, *args, **kwargs))

    monkeypatch.setattr(MilvusClient, "has_collection", not_yet)
    second = MilvusLongTermStore(cfg, tmp_path / "b", 384)
    monkeypatch.undo()
    assert len(checks) >= 2  # it found the collection after its create failed
    try:
        # What one writes, the other reads and finds at once (Strong consistency).
        record = _record("alice", "Margaret lives in Lisbon.", 1)
        first.upsert([record])
        assert [r.text for r in second.get("alice", [record.id])] == [record.text]
        hits = second.search("alice", record.vector, 3)
        assert hits and hits[0][0].id == record.id
        assert second.get("bob", [record.id]) == []  # filtered by user
        assert second.delete("alice", [record.id]) == [record.id]
        assert first.get("alice", [record.id]) == []
    finally:
        first.close()
        second.close()
