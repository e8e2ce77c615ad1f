"""Per-user write versions of the long-term store: what proves a copy is current.

A persisted hot index is only as good as the proof that the store has not changed
since it was taken. Milvus offers no per-user change counter and no compare-and-set,
and a full scan of one user costs seconds in Milvus Lite (even ``count(*)``: 7-13 s
at 100k memories on this project's 2-core machine), so the store keeps a small log
beside the memories, in a second collection (``<collection>_versions``): every write
of a user's memories (upsert, delete, cluster ids) first inserts a row
``(token, user, "pending", deadline)`` with a fresh random token, then writes the
memories, then marks its row ``"done"``. A user's :class:`StoreVersion` is the set
of their rows; reading it is one small query (~3 ms).

Why this proves currency, with any number of processes writing and crashing:

- Each writer only ever writes its own row (its token), so no write is lost to a
  race and no set ever comes back (random tokens; compaction adds a fresh base row
  before it deletes), so equal sets mean no write happened in between.
- A write's row is in the set *before* its memories can land, so a copy that was
  taken without that write carries a set without the row: a copy whose set equals
  the store's now misses no write that could have landed.
- A copy taken by a full scan is claimed only when the set read before the scan
  equals the set read after it and every pending row in it had already passed its
  deadline when the scan began (a writer that crashed mid-write: whatever it wrote
  has landed by then, so the scan saw it). A live pending row means a write is in
  flight: the copy serves from memory but is not claimed (nor persisted).
- A process extends its claim with its own write only when the set after the write
  is exactly the claimed set plus its own done row; any other row means another
  writer interleaved, and the claim is dropped until the next full load.

Writes that bypass the store's methods (old code during a rolling upgrade, manual
edits) are not versioned; upgrade every writer before relying on persisted indexes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

__all__ = ["MilvusVersionLog", "StoreVersion", "VersionRow"]

log = logging.getLogger(__name__)
T = TypeVar("T")

PENDING = "pending"
DONE = "done"
COMPACT_AFTER = 64  # rows per user before a writer folds them into one base row


@dataclass(frozen=True, order=True)
class VersionRow:
    """One write of a user's memories."""

    token: str
    """Random id of the write (32 hex)."""
    state: str
    """``pending`` while the write may still land, ``done`` once it was acknowledged."""
    deadline: float
    """Epoch seconds after which a pending write can no longer land."""


@dataclass(frozen=True)
class StoreVersion:
    """The set of a user's write rows: equal versions mean no write in between."""

    rows: frozenset[VersionRow]

    @classmethod
    def of(cls, rows: Iterable[VersionRow]) -> StoreVersion:
        """A version from rows."""
        return cls(frozenset(rows))

    @property
    def digest(self) -> str:
        """A stable hex digest of the rows' tokens and states (what a persisted copy records)."""
        h = hashlib.sha256()
        for row in sorted(self.rows):
            h.update(f"{row.token}:{row.state}\n".encode("ascii"))
        return f"{len(self.rows)}-{h.hexdigest()[:32]}"

    def settled(self, at: float) -> bool:
        """True when no write can still land after ``at`` (every pending row expired before it)."""
        return all(r.state == DONE or r.deadline < at for r in self.rows)

    def plus_done(self, token: str, deadline: float) -> StoreVersion:
        """This version with one more completed write."""
        return StoreVersion(self.rows | {VersionRow(token, DONE, deadline)})

    def __len__(self) -> int:
        return len(self.rows)


class MilvusVersionLog:
    """The version rows of every user, in a collection beside the memories.

    Args:
        client: the store's client.
        collection: the versions collection's name.
        call: the store's call wrapper (maps Milvus failures to ``MilvusUnavailable``).
        timeout: seconds per call.
        write_window: seconds a pending write may still land after it began (the
            deadline recorded in its row). Generous (an hour by default): clocks of
            replicas differ and a long write is many calls; a writer that crashed
            only costs its user full rebuilds until then, never a stale answer.
    """

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        call: Callable[[str, Callable[[], Any]], Any],
        timeout: float,
        write_window: float,
    ) -> None:
        self._client = client
        self.collection = collection
        self._call = call
        self._timeout = timeout
        self._window = write_window

    def ensure(self) -> None:
        """Create the collection if missing (and load it).

        Raises:
            MilvusException: Milvus refused.
        """
        c, name = self._client, self.collection
        if c.has_collection(name, timeout=self._timeout):
            c.load_collection(name, timeout=self._timeout)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("token", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("user_id", DataType.VARCHAR, max_length=128)
        schema.add_field("state", DataType.VARCHAR, max_length=8)
        schema.add_field("deadline", DataType.DOUBLE)
        # Milvus requires a vector field in every collection; this one is never searched.
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="unused", index_type="AUTOINDEX", metric_type="L2")
        try:
            c.create_collection(
                name, schema=schema, index_params=index, consistency_level="Strong", timeout=self._timeout
            )
        except MilvusException:
            if not c.has_collection(name, timeout=self._timeout):  # another process won the race
                raise
            c.load_collection(name, timeout=self._timeout)

    def _put(self, user_id: str, rows: Iterable[VersionRow]) -> None:
        data = [
            {"token": r.token, "user_id": user_id, "state": r.state, "deadline": r.deadline, "unused": [0.0, 0.0]}
            for r in rows
        ]
        self._call("record a memory write", lambda: self._client.upsert(self.collection, data, timeout=self._timeout))

    def begin(self, user_id: str) -> VersionRow:
        """Record that a write of ``user_id``'s memories starts (before it touches them).

        Returns:
            The pending row (pass it to :meth:`end`).

        Raises:
            MilvusUnavailable: Milvus failed (the write must not go ahead).
        """
        row = VersionRow(uuid.uuid4().hex, PENDING, time.time() + self._window)
        self._put(user_id, [row])
        return row

    def end(self, user_id: str, row: VersionRow) -> VersionRow:
        """Record that a write was acknowledged.

        Returns:
            The done row.

        Raises:
            MilvusUnavailable: Milvus failed (the row stays pending until its deadline).
        """
        done = VersionRow(row.token, DONE, row.deadline)
        self._put(user_id, [done])
        return done

    def read(self, user_id: str) -> StoreVersion:
        """The user's current version.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        rows = self._call(
            "read memory versions",
            lambda: self._client.query(
                self.collection,
                filter=f"user_id == {json.dumps(user_id, ensure_ascii=False)}",
                output_fields=["token", "state", "deadline"],
                timeout=self._timeout,
            ),
        )
        return StoreVersion.of(VersionRow(r["token"], r["state"], float(r["deadline"])) for r in rows)

    def compact(self, user_id: str, seen: StoreVersion) -> StoreVersion | None:
        """Fold the settled rows of ``seen`` into one fresh base row (keeps reads small).

        The base row is written before the old rows are deleted, so the set never
        shrinks to one it had before.

        Returns:
            The version after compaction when nothing else changed meanwhile (the
            caller may carry its claim over), else None.

        Raises:
            MilvusUnavailable: Milvus failed.
        """
        now = time.time()
        old = [r for r in seen.rows if r.state == DONE or r.deadline < now]
        if len(old) < 2:
            return None
        base = VersionRow(uuid.uuid4().hex, DONE, now)
        self._put(user_id, [base])
        tokens = [r.token for r in old]
        self._call(
            "compact memory versions",
            lambda: self._client.delete(self.collection, ids=tokens, timeout=self._timeout),
        )
        after = self.read(user_id)
        expected = StoreVersion((seen.rows - set(old)) | {base})
        return after if after == expected else None
