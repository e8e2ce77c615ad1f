"""Many users' knowledge bases over one store: isolation, scopes, roles.

``KnowledgeBank.for_user(user, session, role=...)`` hands out a
:class:`KnowledgeBase` view of the global statements plus that user's (and that
session's). Views are cached (LRU) so a busy user's statements are loaded and
grounded once; handles for different roles share the same cached view.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import redis

from dmha.config import KnowledgeConfig
from dmha.ids import check_id
from dmha.knowledge.budget import WorkQuota
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.store import InMemoryStore, RedisStore, StatementStore
from dmha.knowledge.view import View
from dmha.redis_connection import RedisConnection

__all__ = ["KnowledgeBank"]


class KnowledgeBank:
    """Per-user knowledge bases sharing global statements.

    Args:
        backend: a :class:`StatementStore`, a :class:`RedisConnection` or a bare
            ``redis.Redis`` client (either wrapped in a :class:`RedisStore`), or None
            for a process-local :class:`InMemoryStore`.
        config: limits and solver budget for every view.
        max_views: how many (user, session) views stay loaded; default
            ``config.loaded_views``.
    """

    def __init__(
        self,
        backend: StatementStore | RedisConnection | redis.Redis | None = None,
        config: KnowledgeConfig | None = None,
        *,
        max_views: int | None = None,
    ) -> None:
        if backend is None:
            backend = InMemoryStore()
        elif isinstance(backend, RedisConnection | redis.Redis):
            backend = RedisStore(backend)
        self._store: StatementStore = backend
        self._config = config or KnowledgeConfig()
        self._max_views = max_views if max_views is not None else self._config.loaded_views
        self._views: OrderedDict[tuple[str, str | None], View] = OrderedDict()
        self._lock = threading.Lock()
        self._quota = WorkQuota(self._config.max_work_seconds_per_minute)

    @property
    def store(self) -> StatementStore:
        """The store every view reads and writes."""
        return self._store

    def for_user(self, user_id: str, session_id: str | None = None, *, role: str = "user") -> KnowledgeBase:
        """The knowledge base a user sees: global + the user's (+ the session's).

        Args:
            user_id: the authenticated user.
            session_id: include this session's session-scope statements.
            role: the caller's role; ``"admin"`` may write and retract global ones.

        Returns:
            A handle; cheap, may be created per request.

        Raises:
            InvalidArgument: a malformed user or session id (see :mod:`dmha.ids`).
        """
        check_id(user_id, "user_id")
        if session_id is not None:
            check_id(session_id, "session_id")
        key = (user_id, session_id)
        with self._lock:
            view = self._views.get(key)
            if view is None:
                view = View(self._store, self._config, user_id, session_id)
                self._views[key] = view
                while len(self._views) > self._max_views:
                    self._views.popitem(last=False)
            else:
                self._views.move_to_end(key)
        return KnowledgeBase._attach(view, role, self._quota)

    def evict(self, user_id: str, session_id: str | None = None) -> None:
        """Drop a cached view (e.g. when a session ends); its statements stay stored.

        Args:
            user_id: the user.
            session_id: the session, or None for the user-level view.
        """
        with self._lock:
            self._views.pop((user_id, session_id), None)
