"""Long-term memory's part in a chat turn.

Before generation the memories relevant to the message are retrieved into the
prompt (ids, scores and why go back in the reply). After the turn is stored,
archival of working-memory overflow runs in the background; if Milvus is down
the turn still answers from working memory with a warning, and the overflow stays
in Redis until a later turn archives it — nothing is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dmha.errors import MilvusUnavailable
from dmha.executor import run_blocking, run_in_background
from dmha.llm.base import LLM, GenerationResult
from dmha.llm.prompt import ContextBlock
from dmha.memory.longterm_memory import LongTermMemory
from dmha.turn import MemoryRef, Turn, TurnState

__all__ = ["MEMORIES_TITLE", "MemoryHook", "memories_block", "memory_line"]

log = logging.getLogger(__name__)

# Framed as background, apart from the chat turns: the small default model copies
# text it reads as an earlier reply (see dmha.config.RetrievalConfig.prompt_roles).
MEMORIES_TITLE = "Notes from earlier conversations with the user (background only, not part of this chat)"


def memory_line(text: str, created_at: float) -> str:
    """One retrieved memory as the prompt shows it: its date, then its text.

    Args:
        text: the memory's text.
        created_at: when it was said (epoch seconds).

    Returns:
        ``"<day month year>: <text>"``.
    """
    return f"{time.strftime('%d %B %Y', time.gmtime(created_at)).lstrip('0')}: {text}"


def memories_block(lines: Sequence[str]) -> ContextBlock:
    """The prompt block of a turn's retrieved memories (lines from :func:`memory_line`)."""
    return ContextBlock(MEMORIES_TITLE, tuple(lines))


class MemoryHook:
    """:class:`~dmha.context.TurnHook` over :class:`LongTermMemory`.

    Args:
        memory: long-term memory.
        llm: for token counting within the retrieval budget.
        top_k: memories retrieved per turn.
        token_budget: prompt tokens reserved for them.
        kinds: the memory kinds the prompt draws from (None = all).
        roles: whose archived turns the prompt draws from (None = all).
    """

    def __init__(
        self,
        memory: LongTermMemory,
        llm: LLM,
        top_k: int,
        token_budget: int,
        kinds: Sequence[str] | None = None,
        roles: Sequence[str] | None = None,
    ) -> None:
        self._memory = memory
        self._llm = llm
        self._top_k = top_k
        self._budget = token_budget
        self._kinds = tuple(kinds) if kinds is not None else None
        self._roles = tuple(roles) if roles is not None else None

    async def prepare(self, turn: TurnState) -> None:
        query = turn.chat_text.strip()
        if not query or self._top_k <= 0:
            return
        try:
            found = await run_blocking(
                self._memory.search,
                turn.principal.user_id,
                query,
                self._top_k,
                self._budget,
                kinds=self._kinds,
                roles=self._roles,
                # What the window already shows would only be shown twice.
                exclude=turn.history,
                count_tokens=self._llm.count_tokens,
            )
        except MilvusUnavailable:
            log.warning("long-term memory unavailable; answering from working memory")
            turn.warnings.append("long-term memory is unavailable; answered from recent turns only")
            return
        turn.memories = [MemoryRef(m.id, m.kind, m.text, m.score, m.why) for m in found]
        if found:
            turn.blocks.append(memories_block([memory_line(m.text, m.created_at) for m in found]))

    async def review(self, turn: TurnState, reply: GenerationResult, regenerate) -> GenerationResult:
        return reply

    def committed(self, turn: TurnState, stored: Sequence[Turn]) -> None:
        run_in_background(self._archive, turn.principal.user_id, turn.session_id)

    def _archive(self, user_id: str, session_id: str) -> None:
        try:
            report = self._memory.archive_overflow(user_id, session_id)
        except MilvusUnavailable:
            # The overflow stays in Redis; the next turn of this session retries.
            log.warning("archival postponed: long-term memory unavailable")
            return
        if report.recluster_due:
            self._memory.recluster(user_id)

    def reorganise(self, user_id: str, session_id: str) -> None:
        """Summarise the whole session into long-term memory and clear it from working memory."""
        self._memory.archive_session(user_id, session_id)
