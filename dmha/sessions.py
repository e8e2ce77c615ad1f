"""The caller's own sessions: list, read, delete.

Keys in working memory are namespaced by user id, so another user's session id
simply does not exist for the caller: NOT_FOUND, never PERMISSION_DENIED.
"""

from __future__ import annotations

import builtins

from dmha.auth.tokens import Principal
from dmha.errors import NotFound
from dmha.executor import run_blocking
from dmha.ids import check_id
from dmha.memory.working import SessionInfo, WorkingMemory
from dmha.turn import Turn

__all__ = ["Sessions"]


class Sessions:
    """Session operations for an authenticated caller.

    Args:
        working: working memory.
    """

    def __init__(self, working: WorkingMemory) -> None:
        self._working = working

    async def list(self, principal: Principal) -> list[SessionInfo]:
        """The caller's live sessions, most recent first."""
        return await run_blocking(self._working.sessions, principal.user_id)

    # ``list`` names a method above, so the builtin is spelled out from here on.
    async def get(self, principal: Principal, session_id: str) -> builtins.list[Turn]:
        """Every stored turn of one of the caller's sessions.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such session for this caller.
        """
        check_id(session_id, "session_id")
        turns = await run_blocking(self._working.all_turns, principal.user_id, session_id)
        if not turns:
            raise NotFound(f"session {session_id} not found")
        return turns

    async def delete(self, principal: Principal, session_id: str) -> None:
        """Forget one of the caller's sessions.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such session for this caller.
        """
        check_id(session_id, "session_id")
        if not await run_blocking(self._working.delete_session, principal.user_id, session_id):
            raise NotFound(f"session {session_id} not found")
