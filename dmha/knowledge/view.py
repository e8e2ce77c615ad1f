"""One view's state — global + user (+ session) statements — kept in step with the store.

Several views read the same namespaces (every user reads ``global``; a user's
session views and user view share the user's statements). Each call first compares
the store's version counters with what the view has seen (one round trip). When
another writer moved one, the view fetches only the ids that writer changed and
applies them: removals and demotions leave the reasoner, additions are admitted
under the resolution policy in creation order, and any decision this view takes
is written back. A full reload (re-grounding everything) happens only on first use,
after an error, or when the change log no longer reaches back far enough.

A statement of a broader scope that loses in a narrower view is *overridden* there
(recorded in the narrowest namespace of its conflict core) instead of being
rejected for everybody.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from types import TracebackType

from dmha.config import KnowledgeConfig
from dmha.knowledge.model import Conflict, Scope, StatementRecord, Status
from dmha.knowledge.reasoner import Loss, Reasoner
from dmha.knowledge.store import (
    GLOBAL_NS,
    Changes,
    Override,
    StatementStore,
    StoreBatch,
    namespace_for,
)

__all__ = ["View"]


def rank(namespace: str) -> int:
    """Breadth of a namespace: global 0, user 1, session 2."""
    return {"g": 0, "u": 1, "s": 2}[namespace[0]]


class View:
    """The shared state behind every :class:`KnowledgeBase` handle of one view.

    Args:
        store: where statements persist.
        config: limits and solver budget.
        user_id: the user.
        session_id: the session, or None for the user-level view.
    """

    def __init__(self, store: StatementStore, config: KnowledgeConfig, user_id: str, session_id: str | None) -> None:
        self.lock = threading.RLock()
        self.store = store
        self.config = config
        self.user_id = user_id
        self.session_id = session_id
        self.layers = [GLOBAL_NS, namespace_for(Scope.USER, user_id, None)]
        if session_id is not None:
            self.layers.append(namespace_for(Scope.SESSION, user_id, session_id))
        self.records: dict[str, StatementRecord] = {}
        self.overrides: dict[str, tuple[str, Override]] = {}
        self.counts: Counter[str] = Counter()
        self.reasoner = Reasoner(config.solver_timeout_ms)
        self.seen: dict[str, int] | None = None
        self.last_time = 0.0

    def tick(self) -> float:
        """A creation time strictly after every other, so "newer wins" is total."""
        self.last_time = max(time.time(), self.last_time + 1e-6)
        return self.last_time

    # -- how this view sees records ----------------------------------------------------
    def shown(self, rec: StatementRecord) -> StatementRecord:
        """``rec`` with this view's status (an override here makes it rejected)."""
        held = self.overrides.get(rec.id)
        if rec.status is Status.ACCEPTED and held is not None:
            ovr = held[1]
            return replace(rec, status=Status.REJECTED, reason=ovr.reason, conflicts_with=ovr.conflicts_with)
        return rec

    def conflict(self, rec: StatementRecord) -> Conflict:
        """A rejected record with its reason and the records of its core."""
        core = tuple(self.shown(self.records[i]) for i in rec.conflicts_with if i in self.records)
        return Conflict(rec, rec.reason, core)

    def lose(self, loss: Loss, batch: StoreBatch) -> Conflict:
        """Record that ``loss.sid`` lost: rejected in its own namespace, or overridden in
        the narrowest namespace of its core when that one is narrower."""
        rec = self.records[loss.sid]
        others = tuple(sorted(loss.core - {loss.sid}))
        members = [self.records[m] for m in loss.core if m in self.records]
        target = max((m.namespace for m in members), key=rank, default=rec.namespace)
        if rank(target) > rank(rec.namespace):
            ovr = Override(loss.sid, loss.reason, others)
            self.overrides[loss.sid] = (target, ovr)
            batch.put_overrides.append((target, ovr))
        else:
            rec = replace(rec, status=Status.REJECTED, reason=loss.reason, conflicts_with=others)
            self.records[loss.sid] = rec
            batch.put_records = [r for r in batch.put_records if r.id != rec.id]
            batch.put_records.append(rec)
        return self.conflict(self.shown(self.records[loss.sid]))

    # -- staying in step with the store ----------------------------------------------
    def sync(self) -> None:
        """Bring the view up to date with the store.

        Raises:
            RedisUnavailable: the store failed.
        """
        versions = dict(zip(self.layers, self.store.versions(self.layers), strict=True))
        if self.seen is None:
            self.reload()
            return
        stale = [ns for ns in self.layers if versions[ns] != self.seen[ns]]
        if not stale:
            return
        with StaleOnError(self):
            fetched = [(ns, self.store.changes(ns, self.seen[ns])) for ns in stale]
            if any(changes is None for _ns, changes in fetched):
                self.reload()
                return
            batch = StoreBatch()
            self._apply(fetched, batch)  # type: ignore[arg-type]
            for ns, changes in fetched:
                assert changes is not None
                self.seen[ns] = changes.version
            self.commit(batch)

    def _apply(self, fetched: list[tuple[str, Changes]], batch: StoreBatch) -> None:
        reasoner = self.reasoner
        admit: set[str] = set()
        losses: list[Loss] = []

        def drop(sid: str) -> None:
            if sid in reasoner:
                losses.extend(reasoner.remove(sid))
            admit.discard(sid)

        for ns, changes in fetched:
            for sid, rec in changes.records.items():
                old = self.records.get(sid)
                if rec is None:
                    if old is not None:
                        drop(sid)
                        del self.records[sid]
                        self.counts[old.namespace] -= 1
                    continue
                if old is None:
                    self.counts[rec.namespace] += 1
                elif old == rec:
                    continue  # our own write, or already applied
                self.records[sid] = rec
                if self.shown(rec).status is Status.ACCEPTED:
                    if old is not None and old.statement != rec.statement:
                        drop(sid)
                    if sid not in reasoner:
                        admit.add(sid)
                else:
                    drop(sid)
            for sid, ovr in changes.overrides.items():
                target = self.records.get(sid)
                if target is None or rank(target.namespace) >= rank(ns):
                    continue
                held = self.overrides.get(sid)
                if ovr is not None:
                    self.overrides[sid] = (ns, ovr)
                    drop(sid)
                elif held is not None and held[0] == ns:
                    del self.overrides[sid]
                    if self.shown(target).status is Status.ACCEPTED and sid not in reasoner:
                        admit.add(sid)
        for loss in losses:
            if loss.sid in self.records:
                self.lose(loss, batch)
        for sid in sorted(admit, key=lambda i: (self.records[i].statement.created_at or 0.0, i)):
            self._admit(sid, batch)
        self.last_time = max([self.last_time] + [self.records[i].statement.created_at or 0.0 for i in admit])

    def _admit(self, sid: str, batch: StoreBatch) -> None:
        admission = self.reasoner.add(sid, self.records[sid].statement)
        if admission.loss is not None:
            self.lose(admission.loss, batch)
        for loss in admission.demoted:
            self.lose(loss, batch)

    def reload(self) -> None:
        """Load every layer and re-ground from scratch.

        Raises:
            RedisUnavailable: the store failed.
        """
        with StaleOnError(self):
            snaps = [self.store.load(ns) for ns in self.layers]
            self.records = {r.id: r for snap in snaps for r in snap.records}
            self.counts = Counter(r.namespace for r in self.records.values())
            self.overrides = {}
            for ns, snap in zip(self.layers, snaps, strict=True):
                for ovr in snap.overrides:
                    target = self.records.get(ovr.statement_id)
                    if target is not None and rank(target.namespace) < rank(ns):
                        self.overrides.setdefault(ovr.statement_id, (ns, ovr))
            self.reasoner = Reasoner(self.config.solver_timeout_ms)
            self.seen = {ns: snap.version for ns, snap in zip(self.layers, snaps, strict=True)}
            batch = StoreBatch()
            live = [r for r in self.records.values() if self.shown(r).status is Status.ACCEPTED]
            live.sort(key=lambda r: (r.statement.created_at or 0.0, r.id))
            # Replaying in creation order under the same policy reproduces every earlier
            # decision; only clashes between namespaces changed by others are new.
            for rec in live:
                self._admit(rec.id, batch)
            self.last_time = max([self.last_time] + [r.statement.created_at or 0.0 for r in self.records.values()])
            self.commit(batch)

    def commit(self, batch: StoreBatch) -> None:
        """Write ``batch``; note the new versions when no other writer came between.

        Raises:
            RedisUnavailable: the store failed; nothing was written.
        """
        if not batch:
            return
        versions = self.store.commit(batch)
        assert self.seen is not None
        for ns, version in versions.items():
            # If someone else wrote in between, keep the old version: the next sync
            # fetches their changes (and ours again, which applies as a no-op).
            if ns in self.seen and self.seen[ns] + 1 == version:
                self.seen[ns] = version

    def stale_on_error(self) -> StaleOnError:
        """A context manager that forgets what was loaded if its block raises."""
        return StaleOnError(self)


class StaleOnError:
    """On any exception, forget what was loaded so the next call reloads from the store
    (the in-memory view may be ahead of a commit that failed)."""

    def __init__(self, view: View) -> None:
        self._view = view

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._view.seen = None
