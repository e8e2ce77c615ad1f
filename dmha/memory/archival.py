"""Archival: moving turns from working memory (Redis) into long-term memory (Milvus).

Order of operations, which makes archival crash-safe and idempotent:

1. read the turns to archive (they stay in Redis);
2. build a ``turn`` memory per turn and a ``summary`` memory per batch of
   ``archive_batch`` turns, all with ids derived from the turn ids;
3. embed and upsert them; only when Milvus has acknowledged,
4. trim exactly those turns from Redis.

A crash between 3 and 4 leaves the turns in Redis; the next run rebuilds the same
records with the same ids and upserts them again: no loss, no duplicate. Batches
are always cut from the oldest remaining turn and only whole batches are trimmed,
so a rerun cuts the same batches. If Milvus is down, step 3 raises
:class:`~dmha.errors.MilvusUnavailable` and nothing is trimmed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dmha.errors import DMHAError
from dmha.memory.embedding import Embedder
from dmha.memory.records import MemoryRecord, index_text, memory_id
from dmha.memory.summariser import ExtractiveSummariser, Summariser
from dmha.memory.working import WorkingMemory
from dmha.turn import Turn

__all__ = ["ArchiveResult", "Archiver", "build_records"]

log = logging.getLogger(__name__)

# Milvus VARCHAR holds 65535 bytes; a longer turn is cut (at a character boundary)
# rather than blocking its session's archival forever.
_MAX_STORED_BYTES = 60_000


def _fit(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= _MAX_STORED_BYTES:
        return text
    log.warning("a turn of %d bytes was cut to %d for long-term memory", len(raw), _MAX_STORED_BYTES)
    return raw[:_MAX_STORED_BYTES].decode("utf-8", errors="ignore")


def build_records(
    turns: Sequence[Turn],
    batch: int,
    summarise: Callable[[Sequence[Turn]], str] | None,
) -> list[MemoryRecord]:
    """The memories (without vectors) for some turns of one user and session.

    Args:
        turns: oldest first.
        batch: turns per summary.
        summarise: makes a batch's summary text; None = no summaries.

    Returns:
        Per batch: its turn memories, then its summary memory (linked to the batch's
        turn ids). A batch of one turn gets no summary: it would repeat the turn.
    """
    out: list[MemoryRecord] = []
    for start in range(0, len(turns), batch):
        chunk = turns[start : start + batch]
        for t in chunk:
            out.append(
                MemoryRecord(
                    id=memory_id(t.user_id, "turn", [t.turn_id]),
                    user_id=t.user_id,
                    session_id=t.session_id,
                    kind="turn",
                    text=_fit(t.text),
                    created_at=t.created_at,
                    source_ids=(t.turn_id,),
                    role=t.role,
                    importance=0.5,
                )
            )
        if summarise is None or len(chunk) < 2:
            continue
        text = summarise(chunk).strip()
        if not text:
            continue
        ids = [t.turn_id for t in chunk]
        out.append(
            MemoryRecord(
                id=memory_id(chunk[0].user_id, "summary", ids),
                user_id=chunk[0].user_id,
                session_id=chunk[0].session_id,
                kind="summary",
                text=_fit(text),
                created_at=chunk[-1].created_at,
                source_ids=tuple(ids),
                role="",
                importance=0.6,
            )
        )
    return out


@dataclass(frozen=True)
class ArchiveResult:
    """What :meth:`Archiver.archive` stored and trimmed."""

    records: list[MemoryRecord]
    turns: int
    trimmed: int


class Archiver:
    """Archives a session's oldest turns. Blocking.

    Args:
        working: the working memory holding the turns.
        embedder: embeds the new memories.
        write: stores memories durably (Milvus upsert, then the hot-index mirror);
            must raise when the store did not acknowledge.
        batch: ``archive_batch`` turns per summary.
        summariser: the summariser to use; None = archive turns without summaries.
    """

    def __init__(
        self,
        working: WorkingMemory,
        embedder: Embedder,
        write: Callable[[Sequence[MemoryRecord]], None],
        batch: int,
        summariser: Summariser | None,
    ) -> None:
        self._working = working
        self._embedder = embedder
        self._write = write
        self._batch = batch
        self._summariser = summariser
        self._fallback = ExtractiveSummariser()

    def _summarise(self, turns: Sequence[Turn]) -> str:
        assert self._summariser is not None
        try:
            return self._summariser(turns)
        except DMHAError:
            # An LLM hiccup must not block archival: the turns still go, with an
            # extractive summary instead.
            log.warning("summariser failed; using the extractive summary", exc_info=True)
            return self._fallback(turns)

    def archive(self, user_id: str, session_id: str, *, everything: bool) -> ArchiveResult:
        """Archive overflowing turns (whole batches) or, at session end, all of them.

        Args:
            user_id: the user.
            session_id: the session.
            everything: True at session end (the last partial batch goes too).

        Returns:
            The stored records and how many turns were archived and trimmed.

        Raises:
            MilvusUnavailable: the store did not acknowledge; nothing was trimmed.
            RedisUnavailable: working memory failed (before storing: nothing changed;
                after: the turns are stored and the next run re-upserts them).
        """
        if everything:
            turns = self._working.all_turns(user_id, session_id)
        else:
            turns = self._working.overflow(user_id, session_id)
            turns = turns[: len(turns) - len(turns) % self._batch]
        if not turns:
            return ArchiveResult([], 0, 0)
        records = build_records(turns, self._batch, self._summarise if self._summariser is not None else None)
        vectors = self._embedder.embed([index_text(r) for r in records])
        records = [dataclasses.replace(r, vector=v) for r, v in zip(records, vectors, strict=True)]
        self._write(records)
        trimmed = self._working.trim(user_id, session_id, [t.turn_id for t in turns])
        return ArchiveResult(records, len(turns), trimmed)
