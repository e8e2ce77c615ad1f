"""Working memory: the recent turns of each (user, session), kept in Redis.

Layout (all keys under ``dmha:wm:``):

- ``dmha:wm:turns:<user>:<session>`` a list of JSON turn records, oldest first;
- ``dmha:wm:sessions:<user>`` a sorted set session_id -> last activity time.

On a Redis Cluster the user id is written ``{<user>}`` (a hash tag).

Both expire ``ttl_seconds`` after the last turn. Turns beyond ``max_turns`` stay
in the list until long-term memory has acknowledged them (:meth:`overflow` then
:meth:`trim`), so a crash between the two steps never loses a turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import redis

from dmha.config import WorkingMemoryConfig
from dmha.ids import redis_key
from dmha.redis_connection import RedisConnection
from dmha.turn import Turn

__all__ = ["RedisWorkingMemory", "SessionInfo", "WorkingMemory"]


@dataclass(frozen=True)
class SessionInfo:
    """A session as listed to its owner."""

    session_id: str
    turn_count: int
    last_active: float


class WorkingMemory(Protocol):
    """Recent turns per (user, session). Blocking API: call it through ``run_blocking``."""

    def append(self, turns: Sequence[Turn]) -> None:
        """Store turns (all of one user and session) atomically; refreshes the TTL.

        Raises:
            RedisUnavailable: the backend is down (nothing was stored).
        """
        ...

    def recent(self, user_id: str, session_id: str, limit: int | None = None) -> list[Turn]:
        """The newest ``limit`` turns (default: the cap), oldest first."""
        ...

    def overflow(self, user_id: str, session_id: str) -> list[Turn]:
        """Turns beyond the cap, oldest first, still stored until :meth:`trim`."""
        ...

    def trim(self, user_id: str, session_id: str, turn_ids: Sequence[str]) -> int:
        """Remove the given turns (after long-term memory acknowledged them).

        Returns:
            How many were removed.
        """
        ...

    def all_turns(self, user_id: str, session_id: str) -> list[Turn]:
        """Every stored turn of the session, oldest first."""
        ...

    def sessions(self, user_id: str) -> list[SessionInfo]:
        """The user's live sessions, most recently active first."""
        ...

    def delete_session(self, user_id: str, session_id: str) -> bool:
        """Forget a session. Returns False when the user has no such session."""
        ...


def _text(value: str | bytes) -> str:
    """A Redis reply as text (our clients decode replies; a caller's client may not)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisWorkingMemory:
    """:class:`WorkingMemory` on Redis.

    Args:
        conn: the Redis connection (embedded or external).
        cfg: the ``memory.working`` config section.
    """

    def __init__(self, conn: RedisConnection, cfg: WorkingMemoryConfig) -> None:
        self._conn = conn
        self._cfg = cfg

    # On a Redis Cluster the user id is the keys' hash tag: one user's turns and
    # session index share a slot, so each transaction below stays on one node.
    def _turns_key(self, user_id: str, session_id: str) -> str:
        return redis_key("dmha:wm:turns", user_id, session_id, tag=self._conn.cluster)

    def _sessions_key(self, user_id: str) -> str:
        return redis_key("dmha:wm:sessions", user_id, tag=self._conn.cluster)

    def append(self, turns: Sequence[Turn]) -> None:
        if not turns:
            return
        user_id, session_id = turns[0].user_id, turns[0].session_id
        if any(t.user_id != user_id or t.session_id != session_id for t in turns):
            raise ValueError("append() takes turns of one user and session")
        key, skey = self._turns_key(user_id, session_id), self._sessions_key(user_id)
        ttl = self._cfg.ttl_seconds

        def work(c: redis.Redis) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.rpush(key, *(t.to_json() for t in turns))
            pipe.expire(key, ttl)
            pipe.zadd(skey, {session_id: turns[-1].created_at})
            pipe.expire(skey, ttl)
            pipe.execute()

        self._conn.call(work)

    def _range(self, user_id: str, session_id: str, start: int, end: int) -> list[Turn]:
        key = self._turns_key(user_id, session_id)
        raw = self._conn.call(lambda c: c.lrange(key, start, end))
        return [Turn.from_json(r) for r in raw]

    def recent(self, user_id: str, session_id: str, limit: int | None = None) -> list[Turn]:
        n = self._cfg.max_turns if limit is None else limit
        if n <= 0:
            return []
        return self._range(user_id, session_id, -n, -1)

    def overflow(self, user_id: str, session_id: str) -> list[Turn]:
        # One LRANGE to "all but the newest max_turns": reading the length first and the
        # range second let a concurrent trim in between shift the list, and the newest
        # turns were then archived and trimmed too (the session vanished from Redis).
        return self._range(user_id, session_id, 0, -self._cfg.max_turns - 1)

    def trim(self, user_id: str, session_id: str, turn_ids: Sequence[str]) -> int:
        wanted = set(turn_ids)
        if not wanted:
            return 0
        key = self._turns_key(user_id, session_id)

        def work(c: redis.Redis) -> int:
            raw = c.lrange(key, 0, -1)
            pipe = c.pipeline(transaction=True)
            count = 0
            for r in raw:
                if Turn.from_json(r).turn_id in wanted:
                    pipe.lrem(key, 1, _text(r))
                    count += 1
            pipe.execute()
            return count

        return self._conn.call(work)

    def all_turns(self, user_id: str, session_id: str) -> list[Turn]:
        return self._range(user_id, session_id, 0, -1)

    def sessions(self, user_id: str) -> list[SessionInfo]:
        skey = self._sessions_key(user_id)

        def work(c: redis.Redis) -> list[SessionInfo]:
            # withscores=True gives (member, score) pairs; redis-py's types cannot say so.
            pairs = cast("list[tuple[str | bytes, float]]", c.zrevrange(skey, 0, -1, withscores=True))
            entries = [(_text(sid), ts) for sid, ts in pairs]
            pipe = c.pipeline(transaction=False)
            for sid, _ in entries:
                pipe.llen(self._turns_key(user_id, sid))
            counts = pipe.execute()
            return [
                SessionInfo(session_id=sid, turn_count=int(n), last_active=float(ts))
                for (sid, ts), n in zip(entries, counts, strict=True)
                if n  # a session whose turn list expired is gone
            ]

        return self._conn.call(work)

    def delete_session(self, user_id: str, session_id: str) -> bool:
        key, skey = self._turns_key(user_id, session_id), self._sessions_key(user_id)

        def work(c: redis.Redis) -> bool:
            pipe = c.pipeline(transaction=True)
            pipe.delete(key)
            pipe.zrem(skey, session_id)
            deleted, removed = pipe.execute()
            return bool(deleted or removed)

        return self._conn.call(work)
