"""In-memory stand-ins for the memory backends (unit tier: no Redis, no Milvus, no model)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from dmha.errors import MilvusUnavailable
from dmha.memory.bm25 import tokenize
from dmha.memory.records import MemoryRecord
from dmha.memory.versions import StoreVersion, VersionRow
from dmha.memory.working import SessionInfo
from dmha.turn import Turn


class HashEmbedder:
    """Deterministic bag-of-words embedder: texts sharing words get similar vectors."""

    def __init__(self, dim: int = 64) -> None:
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self._dim).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vec = sum((self._word(w) for w in tokenize(text)), np.zeros(self._dim, np.float32))
            if not np.any(vec):
                vec = self._word("<empty>")
            out[i] = vec / np.linalg.norm(vec)
        return out


class MemoryStore:
    """A LongTermStore in a dict; ``fail`` makes every call raise MilvusUnavailable."""

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self.rows: dict[str, MemoryRecord] = {}
        self.fail = False
        self.upserts = 0
        self.versions: dict[str, dict[str, VersionRow]] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def _check(self) -> None:
        if self.fail:
            raise MilvusUnavailable("fake Milvus is down")

    def probe(self, timeout: float) -> None:
        self._check()

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        self._check()
        self.upserts += 1
        for r in records:
            self.rows[r.id] = r

    def get(self, user_id: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        self._check()
        out = [self.rows[i] for i in dict.fromkeys(ids) if i in self.rows and self.rows[i].user_id == user_id]
        return out if with_vectors else [dataclasses.replace(r, vector=None) for r in out]

    def scan(
        self, user_id: str, *, kind: str | None = None, session_id: str | None = None, with_vectors: bool = False
    ) -> Iterator[MemoryRecord]:
        self._check()
        for mid in sorted(self.rows):
            r = self.rows[mid]
            if r.user_id == user_id and kind in (None, r.kind) and session_id in (None, r.session_id):
                yield r if with_vectors else dataclasses.replace(r, vector=None)

    def search(self, user_id: str, vector: np.ndarray, k: int) -> list[tuple[MemoryRecord, float]]:
        self._check()
        mine = [r for r in self.rows.values() if r.user_id == user_id]
        scored = sorted(((r, float(np.dot(r.vector, vector))) for r in mine), key=lambda x: -x[1])
        return scored[:k]

    def delete(self, user_id: str, ids: Sequence[str]) -> list[str]:
        self._check()
        gone = [i for i in ids if i in self.rows and self.rows[i].user_id == user_id]
        for i in gone:
            del self.rows[i]
        return gone

    def delete_where(
        self, user_id: str, *, session_id: str | None = None, source_id: str | None = None, kind: str | None = None
    ) -> list[str]:
        self._check()
        gone = [
            r.id
            for r in self.rows.values()
            if r.user_id == user_id
            and session_id in (None, r.session_id)
            and kind in (None, r.kind)
            and (source_id is None or source_id in r.source_ids)
        ]
        for i in gone:
            del self.rows[i]
        return gone

    def set_clusters(self, user_id: str, assignments: Mapping[str, int]) -> None:
        self._check()
        for mid, cid in assignments.items():
            r = self.rows.get(mid)
            if r is not None and r.user_id == user_id:
                self.rows[mid] = dataclasses.replace(r, cluster_id=cid)

    def count(self, user_id: str, *, cluster_id: int | None = None) -> int:
        self._check()
        return sum(r.user_id == user_id and cluster_id in (None, r.cluster_id) for r in self.rows.values())

    def begin_write(self, user_id: str) -> VersionRow:
        self._check()
        row = VersionRow(uuid.uuid4().hex, "pending", time.time() + 3600)
        self.versions.setdefault(user_id, {})[row.token] = row
        return row

    def end_write(self, user_id: str, row: VersionRow) -> VersionRow:
        self._check()
        done = VersionRow(row.token, "done", row.deadline)
        self.versions.setdefault(user_id, {})[row.token] = done
        return done

    def version(self, user_id: str) -> StoreVersion:
        self._check()
        return StoreVersion.of(self.versions.get(user_id, {}).values())

    def compact_versions(self, user_id: str, seen: StoreVersion) -> StoreVersion | None:
        self._check()
        rows = self.versions.setdefault(user_id, {})
        base = VersionRow(uuid.uuid4().hex, "done", time.time())
        rows[base.token] = base
        for r in seen.rows:
            if r.state == "done":
                rows.pop(r.token, None)
        return self.version(user_id)

    def close(self) -> None:
        pass


class ListWorkingMemory:
    """WorkingMemory in lists, with the same overflow/trim contract as Redis."""

    def __init__(self, max_turns: int) -> None:
        self.max_turns = max_turns
        self.turns: dict[tuple[str, str], list[Turn]] = {}
        self.trims = 0

    def append(self, turns: Sequence[Turn]) -> None:
        for t in turns:
            self.turns.setdefault((t.user_id, t.session_id), []).append(t)

    def recent(self, user_id: str, session_id: str, limit: int | None = None) -> list[Turn]:
        n = self.max_turns if limit is None else limit
        return self.turns.get((user_id, session_id), [])[-n:] if n > 0 else []

    def overflow(self, user_id: str, session_id: str) -> list[Turn]:
        turns = self.turns.get((user_id, session_id), [])
        return list(turns[: max(0, len(turns) - self.max_turns)])

    def trim(self, user_id: str, session_id: str, turn_ids: Sequence[str]) -> int:
        self.trims += 1
        wanted = set(turn_ids)
        turns = self.turns.get((user_id, session_id), [])
        kept = [t for t in turns if t.turn_id not in wanted]
        self.turns[(user_id, session_id)] = kept
        return len(turns) - len(kept)

    def all_turns(self, user_id: str, session_id: str) -> list[Turn]:
        return list(self.turns.get((user_id, session_id), []))

    def sessions(self, user_id: str) -> list[SessionInfo]:
        return [SessionInfo(s, len(ts), ts[-1].created_at) for (u, s), ts in self.turns.items() if u == user_id and ts]

    def delete_session(self, user_id: str, session_id: str) -> bool:
        return self.turns.pop((user_id, session_id), None) is not None
