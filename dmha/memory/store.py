"""The long-term store: every user's memories in one Milvus collection.

``MilvusClient`` talks to an embedded Milvus Lite database (a local ``.db`` path,
the default ``<data_dir>/milvus.db``; only one process may open it) or to any Milvus
standalone/cluster by URI and token. ``user_id`` is the collection's partition key
and every call here takes a user and filters on it, so no path can return,
change or delete another user's memory.

Milvus failures surface as :class:`~dmha.errors.MilvusUnavailable`; a Milvus Lite
database that is locked or corrupt is a :class:`~dmha.errors.StartupError` naming
the path.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import MilvusException

from dmha.config import LongTermConfig
from dmha.errors import MilvusUnavailable, StartupError
from dmha.failfast import FailFast
from dmha.memory.milvus_errors import NOT_LOADED, is_backend_error, is_outage, lite_failure, quiet_lite_unimplemented
from dmha.memory.records import MemoryRecord
from dmha.memory.versions import MilvusVersionLog, StoreVersion, VersionRow

__all__ = ["LongTermStore", "MilvusLongTermStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCALAR_FIELDS = [
    "id",
    "user_id",
    "session_id",
    "kind",
    "text",
    "created_at",
    "source_ids",
    "cluster_id",
    "role",
    "importance",
]
_MAX_SOURCES = 256
_PAGE = 16384  # rows per query: Milvus's cap on offset + limit
_WRITE_WINDOW = 3600.0  # seconds a pending write may still land (see dmha.memory.versions)


class LongTermStore(Protocol):
    """Per-user memory storage. Blocking; every method is scoped to one user.

    All methods raise :class:`~dmha.errors.MilvusUnavailable` when the backend fails.
    """

    @property
    def dim(self) -> int:
        """Vector dimension of the collection."""
        ...

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        """Insert or replace records (by id). Returns only after the backend acknowledged.

        Args:
            records: records with vectors; may mix users.
        """
        ...

    def get(self, user_id: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        """The user's records among ``ids`` (ids of other users are silently absent)."""
        ...

    def scan(
        self,
        user_id: str,
        *,
        kind: str | None = None,
        session_id: str | None = None,
        with_vectors: bool = False,
    ) -> Iterator[MemoryRecord]:
        """Every record of the user (optionally of one kind / session), in id order."""
        ...

    def search(self, user_id: str, vector: np.ndarray, k: int) -> list[tuple[MemoryRecord, float]]:
        """The user's ``k`` records most similar (inner product) to ``vector``, best first."""
        ...

    def delete(self, user_id: str, ids: Sequence[str]) -> list[str]:
        """Delete the user's records among ``ids``.

        Returns:
            The ids that existed and were deleted.
        """
        ...

    def delete_where(
        self,
        user_id: str,
        *,
        session_id: str | None = None,
        source_id: str | None = None,
        kind: str | None = None,
    ) -> list[str]:
        """Delete the user's records matching all the given conditions (all records if none).

        Args:
            user_id: the owner.
            session_id: only this session's records.
            source_id: only records whose ``source_ids`` contain this turn id.
            kind: only records of this kind.

        Returns:
            The deleted ids.
        """
        ...

    def set_clusters(self, user_id: str, assignments: Mapping[str, int]) -> None:
        """Write cluster ids back (partial update: nothing else changes)."""
        ...

    def count(self, user_id: str, *, cluster_id: int | None = None) -> int:
        """How many records the user has (optionally only those with this cluster id)."""
        ...

    def probe(self, timeout: float) -> None:
        """Check that the backend answers within ``timeout`` seconds (the health probe)."""
        ...

    def begin_write(self, user_id: str) -> VersionRow:
        """Record that a write of the user's memories starts (see :mod:`dmha.memory.versions`).

        Returns:
            The pending version row to pass to :meth:`end_write`.
        """
        ...

    def end_write(self, user_id: str, row: VersionRow) -> VersionRow:
        """Record that the write begun with ``row`` was acknowledged.

        Returns:
            The done row.
        """
        ...

    def version(self, user_id: str) -> StoreVersion:
        """The user's write version (equal versions: no write in between)."""
        ...

    def compact_versions(self, user_id: str, seen: StoreVersion) -> StoreVersion | None:
        """Fold the user's settled version rows into one.

        Returns:
            The new version when nothing else changed meanwhile, else None.
        """
        ...

    def close(self) -> None:
        """Release the client (and an embedded database)."""
        ...


def _quote(value: str) -> str:
    # A JSON string literal is a valid Milvus string literal (quotes and backslashes
    # escaped); Milvus Lite does not support filter templating (filter_params).
    return json.dumps(value, ensure_ascii=False)


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


class MilvusLongTermStore:
    """:class:`LongTermStore` on ``pymilvus.MilvusClient``.

    Args:
        cfg: the ``memory.longterm`` config section.
        data_dir: DMHA's data dir (holds ``milvus.db`` when no URI is configured).
        dim: embedding dimension; an existing collection must match it.

    Raises:
        StartupError: the database cannot be opened (locked, corrupt, unreachable) or
            its collection has a different vector dimension.
    """

    def __init__(self, cfg: LongTermConfig, data_dir: Path, dim: int) -> None:
        self._cfg = cfg
        self._dim = dim
        self._timeout = cfg.timeout_seconds
        self._collection = cfg.collection
        self._switch = FailFast(cfg.retry_after_seconds)
        self._uri = cfg.uri or str(Path(data_dir) / "milvus.db")
        self._local = self._uri.endswith(".db")
        # Milvus Lite does not support concurrent writers on one collection.
        self._write_lock = threading.Lock()
        where = f"Milvus Lite database {self._uri}" if self._local else f"Milvus at {_redact(self._uri)}"
        if self._local:
            Path(self._uri).parent.mkdir(parents=True, exist_ok=True)
            quiet_lite_unimplemented()
        try:
            token = cfg.token.get_secret_value() if cfg.token else ""
            self._client = MilvusClient(uri=self._uri, token=token, timeout=self._timeout)
        except MilvusException as exc:
            if self._local:
                raise StartupError(lite_failure(Path(self._uri))) from exc
            raise StartupError(f"cannot connect to {where}: {exc}") from exc
        self._versions = MilvusVersionLog(
            self._client, f"{self._collection}_versions", self._call, self._timeout, _WRITE_WINDOW
        )
        try:
            self._ensure_collection()
            self._versions.ensure()
        except MilvusException as exc:
            self.close()
            raise StartupError(f"cannot open collection {self._collection!r} in {where}: {exc}") from exc
        except StartupError:
            self.close()  # release an embedded database's lock before reporting
            raise

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def uri(self) -> str:
        """The URI in use (credentials redacted)."""
        return _redact(self._uri)

    def _ensure_collection(self) -> None:
        c, name = self._client, self._collection
        if c.has_collection(name, timeout=self._timeout):
            desc = c.describe_collection(name, timeout=self._timeout)
            for f in desc.get("fields", []):
                if f.get("name") == "vector":
                    have = int(f.get("params", {}).get("dim", 0))
                    if have != self._dim:
                        raise StartupError(
                            f"collection {name!r} at {self.uri} holds {have}-d vectors but the "
                            f"embedder makes {self._dim}-d ones; use another collection name"
                        )
            c.load_collection(name, timeout=self._timeout)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        # The partition key routes each user to one partition, so a filtered query
        # touches only that user's data.
        schema.add_field("user_id", DataType.VARCHAR, max_length=128, is_partition_key=True)
        schema.add_field("session_id", DataType.VARCHAR, max_length=128)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("created_at", DataType.DOUBLE)
        schema.add_field(
            "source_ids",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=_MAX_SOURCES,
            max_length=64,
        )
        schema.add_field("cluster_id", DataType.INT64)
        schema.add_field("role", DataType.VARCHAR, max_length=16)
        schema.add_field("importance", DataType.FLOAT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="IP")
        for scalar in ("session_id", "kind"):
            index.add_index(field_name=scalar, index_type="INVERTED")
        try:
            c.create_collection(
                name,
                schema=schema,
                index_params=index,
                consistency_level="Strong",
                timeout=self._timeout,
            )
        except MilvusException:
            # Replicas and workers starting together against a new shared Milvus race
            # to create the collection: the loser opens the winner's.
            if not c.has_collection(name, timeout=self._timeout):
                raise
            log.info("Milvus collection %s at %s was created by another process", name, self.uri)
            self._ensure_collection()
            return
        log.info("created Milvus collection %s at %s", name, self.uri)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if not self._switch.allow():
            raise MilvusUnavailable(
                "long-term memory (Milvus) is unavailable; retry shortly"
            ) from self._switch.last_error
        try:
            try:
                result = fn()
            except MilvusException as exc:
                if exc.code != NOT_LOADED:
                    raise
                # A restarted Milvus (Lite always) comes back with the collection
                # released: load it again rather than fail until DMHA restarts.
                log.warning("Milvus collection %s was released; loading it again", self._collection)
                for name in (self._collection, self._versions.collection):
                    self._client.load_collection(name, timeout=self._timeout)
                result = fn()
        except Exception as exc:
            if not is_backend_error(exc):
                self._switch.answered()
                raise
            if is_outage(exc):
                self._switch.failed(exc)
            else:
                self._switch.answered()
            raise MilvusUnavailable(f"long-term memory (Milvus) failed to {what}; retry shortly") from exc
        self._switch.answered()
        return result

    @staticmethod
    def _row(record: MemoryRecord) -> dict[str, Any]:
        if record.vector is None:
            raise ValueError(f"memory {record.id} has no vector")
        return {
            "id": record.id,
            "user_id": record.user_id,
            "session_id": record.session_id,
            "kind": record.kind,
            "text": record.text,
            "created_at": float(record.created_at),
            "source_ids": list(record.source_ids[:_MAX_SOURCES]),
            "cluster_id": int(record.cluster_id),
            "role": record.role,
            "importance": float(record.importance),
            "vector": np.asarray(record.vector, dtype=np.float32).tolist(),
        }

    @staticmethod
    def _record(row: Mapping[str, Any]) -> MemoryRecord:
        vec = row.get("vector")
        return MemoryRecord(
            id=row["id"],
            user_id=row["user_id"],
            session_id=row["session_id"],
            kind=row["kind"],
            text=row["text"],
            created_at=float(row["created_at"]),
            source_ids=tuple(row.get("source_ids") or ()),
            cluster_id=int(row["cluster_id"]),
            role=row.get("role") or "",
            importance=float(row.get("importance", 0.5)),
            vector=None if vec is None else np.asarray(vec, dtype=np.float32),
        )

    @staticmethod
    def _filter(user_id: str, **conds: str | None) -> str:
        parts = [f"user_id == {_quote(user_id)}"]
        if conds.get("session_id") is not None:
            parts.append(f"session_id == {_quote(conds['session_id'] or '')}")
        if conds.get("kind") is not None:
            parts.append(f"kind == {_quote(conds['kind'] or '')}")
        if conds.get("source_id") is not None:
            parts.append(f"array_contains(source_ids, {_quote(conds['source_id'] or '')})")
        return " and ".join(parts)

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        rows = [self._row(r) for r in records]
        if not rows:
            return
        with self._write_lock:
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                self._call(
                    "store memories",
                    partial(self._client.upsert, self._collection, chunk, timeout=self._timeout),
                )

    def _fields(self, with_vectors: bool) -> list[str]:
        return [*_SCALAR_FIELDS, "vector"] if with_vectors else list(_SCALAR_FIELDS)

    def get(self, user_id: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        out: list[MemoryRecord] = []
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            expr = f"{self._filter(user_id)} and id in {json.dumps(chunk, ensure_ascii=False)}"
            size = len(chunk)
            rows = self._call(
                "read memories",
                partial(
                    self._client.query,
                    self._collection,
                    filter=expr,
                    output_fields=self._fields(with_vectors),
                    limit=size,
                    timeout=self._timeout,
                ),
            )
            out.extend(self._record(r) for r in rows)
        return out

    def _query(self, expr: str, fields: list[str], limit: int | None) -> list[dict[str, Any]]:
        """A bulk read (scans): allowed ``bulk_timeout_seconds``."""
        extra = {} if limit is None else {"limit": limit}
        return self._call(
            "read memories",
            lambda: self._client.query(
                self._collection,
                filter=expr,
                output_fields=fields,
                timeout=self._cfg.bulk_timeout_seconds,
                **extra,
            ),
        )

    @staticmethod
    def _range(expr: str, lo: str | None, hi: str | None) -> str:
        if lo is not None:
            expr += f" and id >= {_quote(lo)}"
        if hi is not None:
            expr += f" and id < {_quote(hi)}"
        return expr

    def _split(self, expr: str) -> Iterator[tuple[str | None, str | None]]:
        """Id ranges, in order, each holding fewer than a page of the matching rows.

        A limited query returns an arbitrary subset (Milvus Lite does not return the
        smallest keys), so pages are cut by id ranges instead: a range whose id-only
        query comes back full is split at the median of the ids it returned.
        """
        stack: list[tuple[str | None, str | None]] = [(None, None)]
        while stack:
            lo, hi = stack.pop()
            rows = self._query(self._range(expr, lo, hi), ["id"], _PAGE)
            if len(rows) < _PAGE:
                if rows:
                    yield lo, hi
                continue
            ids = sorted(r["id"] for r in rows)
            mid = ids[len(ids) // 2]
            stack.append((mid, hi))
            stack.append((lo, mid))  # popped first: ranges come out in id order

    def _rows_where(self, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        if self._local:
            # Milvus Lite has no result window, and each query pays a scan of the
            # partition (seconds at 100k rows): one unlimited query is fastest there.
            yield from sorted(self._query(expr, fields, None), key=lambda r: r["id"])
            return
        for lo, hi in self._split(expr):
            rows = self._query(self._range(expr, lo, hi), fields, _PAGE)
            if len(rows) >= _PAGE:  # grew since it was measured: split it again
                yield from self._rows_where(self._range(expr, lo, hi), fields)
                continue
            yield from sorted(rows, key=lambda r: r["id"])

    def scan(
        self,
        user_id: str,
        *,
        kind: str | None = None,
        session_id: str | None = None,
        with_vectors: bool = False,
    ) -> Iterator[MemoryRecord]:
        expr = self._filter(user_id, kind=kind, session_id=session_id)
        for row in self._rows_where(expr, self._fields(with_vectors)):
            yield self._record(row)

    def search(self, user_id: str, vector: np.ndarray, k: int) -> list[tuple[MemoryRecord, float]]:
        if k <= 0:
            return []
        hits = self._call(
            "search memories",
            lambda: self._client.search(
                self._collection,
                data=[np.asarray(vector, dtype=np.float32).tolist()],
                anns_field="vector",
                filter=self._filter(user_id),
                limit=k,
                output_fields=list(_SCALAR_FIELDS),
                search_params={"metric_type": "IP"},
                timeout=self._timeout,
            ),
        )
        out: list[tuple[MemoryRecord, float]] = []
        for hit in hits[0] if hits else []:
            entity = dict(hit["entity"])
            entity.setdefault("id", hit["id"])
            record = self._record(entity)
            if record.user_id == user_id:  # belt and braces: never leak across users
                out.append((record, float(hit["distance"])))
        return out

    def _ids_where(self, expr: str) -> list[str]:
        return [r["id"] for r in self._rows_where(expr, ["id"])]

    def _delete_ids(self, user_id: str, ids: Sequence[str]) -> None:
        with self._write_lock:
            for start in range(0, len(ids), 1000):
                chunk = list(ids[start : start + 1000])
                expr = f"{self._filter(user_id)} and id in {json.dumps(chunk, ensure_ascii=False)}"
                self._call(
                    "delete memories",
                    partial(self._client.delete, self._collection, filter=expr, timeout=self._timeout),
                )

    def delete(self, user_id: str, ids: Sequence[str]) -> list[str]:
        existing = [r.id for r in self.get(user_id, ids)]
        if existing:
            self._delete_ids(user_id, existing)
        return existing

    def delete_where(
        self,
        user_id: str,
        *,
        session_id: str | None = None,
        source_id: str | None = None,
        kind: str | None = None,
    ) -> list[str]:
        expr = self._filter(user_id, session_id=session_id, source_id=source_id, kind=kind)
        ids = self._ids_where(expr)
        if ids:
            self._delete_ids(user_id, ids)
        return ids

    def set_clusters(self, user_id: str, assignments: Mapping[str, int]) -> None:
        rows = [{"id": mid, "user_id": user_id, "cluster_id": int(cid)} for mid, cid in assignments.items()]
        with self._write_lock:
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                self._call(
                    "store cluster ids",
                    partial(self._client.upsert, self._collection, chunk, partial_update=True, timeout=self._timeout),
                )

    def count(self, user_id: str, *, cluster_id: int | None = None) -> int:
        expr = self._filter(user_id)
        if cluster_id is not None:
            expr += f" and cluster_id == {int(cluster_id)}"
        rows = self._call(
            "count memories",
            lambda: self._client.query(
                self._collection,
                filter=expr,
                output_fields=["count(*)"],
                timeout=self._timeout,
            ),
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def begin_write(self, user_id: str) -> VersionRow:
        return self._versions.begin(user_id)

    def end_write(self, user_id: str, row: VersionRow) -> VersionRow:
        return self._versions.end(user_id, row)

    def version(self, user_id: str) -> StoreVersion:
        return self._versions.read(user_id)

    def compact_versions(self, user_id: str, seen: StoreVersion) -> StoreVersion | None:
        return self._versions.compact(user_id, seen)

    def probe(self, timeout: float) -> None:
        # Not through _call: the probe must reach Milvus while calls fail fast, and a
        # slow probe (its timeout is short) must not make calls fail.
        try:
            state = self._client.get_load_state(self._collection, timeout=timeout).get("state")
            if state != LoadState.Loaded:
                # A restarted Milvus comes back with the collection released.
                for name in (self._collection, self._versions.collection):
                    self._client.load_collection(name, timeout=timeout)
        except Exception as exc:
            if is_backend_error(exc):
                raise MilvusUnavailable("long-term memory (Milvus) did not answer the health probe") from exc
            raise
        self._switch.answered()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # closing a dead connection must not mask the real error
            if not is_backend_error(exc):
                raise
        if self._local:
            # The embedded server runs in this process; stopping it releases the
            # database lock so the same path can be reopened (tests, restarts).
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(os.path.abspath(self._uri))
