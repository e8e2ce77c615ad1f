"""The hot indexes: the ``hot_users`` most recently used :class:`UserIndex` objects.

:class:`HotIndex` keeps an LRU of users' in-process indexes in front of Milvus.
A user's index comes from their persisted copy (:class:`HotIndexStore`) when its
store version (:mod:`dmha.memory.versions`) equals the store's, and is otherwise
rebuilt from Milvus and persisted again. Milvus stays the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from dmha.errors import MilvusUnavailable
from dmha.memory.hot_index_store import HotIndexStore
from dmha.memory.records import MemoryRecord
from dmha.memory.user_index import UserIndex
from dmha.memory.versions import COMPACT_AFTER, StoreVersion, VersionRow

__all__ = ["HotIndex", "UserIndex", "VersionSource"]

log = logging.getLogger(__name__)


class VersionSource(Protocol):
    """The store's write versions (:class:`~dmha.memory.store.LongTermStore` provides them)."""

    def begin_write(self, user_id: str) -> VersionRow:
        """Record that a write starts; returns its pending row."""
        ...

    def end_write(self, user_id: str, row: VersionRow) -> VersionRow:
        """Record that the write was acknowledged; returns its done row."""
        ...

    def version(self, user_id: str) -> StoreVersion:
        """The user's current version."""
        ...

    def compact_versions(self, user_id: str, seen: StoreVersion) -> StoreVersion | None:
        """Fold settled rows into one; the new version when nothing else changed."""
        ...


class HotIndex:
    """An LRU of :class:`UserIndex` objects, loaded on first use.

    A user's index is read from their persisted copy when it holds the store's
    current version, and otherwise rebuilt from the store (and persisted when the
    version stayed the same during the scan). Every write goes through
    :meth:`writing`, which records the write's version and keeps the index's claim.

    Args:
        loader: yields a user's records *with vectors* (the store's ``scan``).
        dim: vector dimension.
        capacity: users kept (``hot_users``); 0 disables the cache.
        ivf_threshold: passed to each :class:`UserIndex`.
        versions: the store's write versions; None = no versions (then nothing is
            persisted either).
        persisted: where indexes are persisted; None = never.
    """

    def __init__(
        self,
        loader: Callable[[str], Iterable[MemoryRecord]],
        dim: int,
        capacity: int,
        ivf_threshold: int = 50_000,
        *,
        versions: VersionSource | None = None,
        persisted: HotIndexStore | None = None,
    ) -> None:
        self._loader = loader
        self._dim = dim
        self._capacity = capacity
        self._ivf_threshold = ivf_threshold
        self._versions = versions
        self._persisted = persisted if versions is not None else None
        self._users: OrderedDict[str, UserIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._user_locks: dict[str, threading.RLock] = {}
        self.loads = {"persisted": 0, "rebuilt": 0}
        """How users' indexes were loaded since start (for stats and tests)."""

    @property
    def enabled(self) -> bool:
        """False when ``hot_users`` is 0."""
        return self._capacity > 0

    def user_lock(self, user_id: str) -> threading.RLock:
        """The lock that orders a user's store writes with their index (re)loads.

        Hold it around "write to Milvus, then mirror here" so a concurrent load
        cannot miss the write (:meth:`writing` takes it).
        """
        with self._lock:
            lock = self._user_locks.get(user_id)
            if lock is None:
                lock = self._user_locks[user_id] = threading.RLock()
            return lock

    @contextmanager
    def writing(self, user_id: str) -> Iterator[UserIndex | None]:
        """Hold around one write of a user's memories: store first, then mirror.

        Records the write in the store's versions (pending before, done after) and
        carries the loaded index's claim over only when no other write interleaved.

        Yields:
            The user's loaded index (mirror the write into it), or None.

        Raises:
            MilvusUnavailable: the write could not be recorded (nothing was written).
        """
        with self.user_lock(user_id):
            index = self.peek(user_id)
            if self._versions is None:
                yield index
                return
            known = index.version if index is not None else None
            if index is not None:
                index.version = None  # unproven until the write is acknowledged
            row = self._versions.begin_write(user_id)
            yield index
            try:
                self._versions.end_write(user_id, row)
                now: StoreVersion | None = self._versions.version(user_id)
            except MilvusUnavailable:
                # The write itself was acknowledged; its row stays pending until its
                # deadline, so no copy is trusted meanwhile.
                log.warning("could not record a memory write of %s; its persisted index is unused for now", user_id)
                return
            assert now is not None
            claim = known is not None and now == known.plus_done(row.token, row.deadline)
            if len(now) > COMPACT_AFTER:
                try:
                    now = self._versions.compact_versions(user_id, now)
                except MilvusUnavailable:
                    now = None
            if claim and now is not None and index is not None and self.peek(user_id) is index:
                index.version = now

    def peek(self, user_id: str) -> UserIndex | None:
        """The user's index if loaded (does not load or touch the LRU order)."""
        with self._lock:
            return self._users.get(user_id)

    def _build(self, user_id: str) -> UserIndex:
        if self._versions is None:
            return self._scan(user_id)
        before = self._versions.version(user_id)
        if self._persisted is not None:
            index = self._persisted.load(user_id, before)
            if index is not None:
                self.loads["persisted"] += 1
                return index
        began = time.time()
        index = self._scan(user_id)
        self.loads["rebuilt"] += 1
        if self._versions.version(user_id) == before and before.settled(began):
            index.version = before
            if self._persisted is not None:
                self._persisted.save(index, before)
        return index

    def _scan(self, user_id: str) -> UserIndex:
        index = UserIndex(user_id, self._dim, self._ivf_threshold)
        batch: list[MemoryRecord] = []
        for rec in self._loader(user_id):
            batch.append(rec)
            if len(batch) >= 4096:
                index.add(batch)
                batch = []
        index.add(batch)
        return index

    def get(self, user_id: str) -> UserIndex | None:
        """The user's index, loading it (persisted copy or store) when absent.

        Returns:
            None when the cache is disabled.

        Raises:
            MilvusUnavailable: loading failed (nothing is cached).
        """
        if not self.enabled:
            return None
        with self._lock:
            index = self._users.get(user_id)
            if index is not None:
                self._users.move_to_end(user_id)
                return index
        evicted: list[UserIndex] = []
        with self.user_lock(user_id):
            with self._lock:
                index = self._users.get(user_id)  # another thread may have loaded it
                if index is not None:
                    return index
            index = self._build(user_id)
            with self._lock:
                self._users[user_id] = index
                while len(self._users) > self._capacity:
                    _, old = self._users.popitem(last=False)
                    evicted.append(old)
                    log.debug("hot index evicted user %s", old.user_id)
        for old in evicted:
            self.persist(old)
        return index

    def persist(self, index: UserIndex) -> bool:
        """Save an index when it holds a proven version not yet on disk.

        Returns:
            True when a file was written.
        """
        if self._persisted is None:
            return False
        with self.user_lock(index.user_id):  # no write is half mirrored meanwhile
            version = index.version
            if version is None or version.digest == index.saved:
                return False
            return self._persisted.save(index, version)

    def persist_all(self) -> int:
        """Save every loaded index whose proven version is not on disk yet (at shutdown).

        Returns:
            How many files were written.
        """
        with self._lock:
            loaded = list(self._users.values())
        return sum(self.persist(index) for index in loaded)

    def drop(self, user_id: str) -> None:
        """Forget a user's index (it is reloaded on next use)."""
        with self._lock:
            self._users.pop(user_id, None)

    def discard(self, user_id: str) -> None:
        """Forget a user's index and delete their persisted copy (their memories were deleted)."""
        self.drop(user_id)
        if self._persisted is not None:
            self._persisted.discard(user_id)

    def discard_persisted(self, user_id: str) -> None:
        """Delete a user's persisted copy, keeping the loaded index."""
        if self._persisted is not None:
            self._persisted.discard(user_id)
            index = self.peek(user_id)
            if index is not None:
                index.saved = None

    def loaded_users(self) -> list[str]:
        """Users with a loaded index, least recently used first."""
        with self._lock:
            return list(self._users)
