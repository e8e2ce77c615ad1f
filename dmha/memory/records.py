"""The records long-term memory stores and returns, and the rules that name them.

Every memory has a deterministic id derived from its source (user, kind and the
turn ids or text it was built from), so archiving the same turns twice is an
idempotent upsert rather than a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dmha.errors import InvalidArgument

__all__ = [
    "CLUSTER_NOISE",
    "CLUSTER_PENDING",
    "KINDS",
    "ArchiveReport",
    "ClusterReport",
    "MemoryKind",
    "MemoryPage",
    "MemoryRecord",
    "MemoryStats",
    "RetrievedMemory",
    "decode_page_token",
    "encode_page_token",
    "index_text",
    "listing_order",
    "memory_id",
]

MemoryKind = Literal["turn", "summary", "cluster_summary", "fact"]
KINDS: tuple[str, ...] = ("turn", "summary", "cluster_summary", "fact")

CLUSTER_PENDING = -2
"""cluster_id of a memory no clustering run has seen yet (counts toward the next run)."""
CLUSTER_NOISE = -1
"""cluster_id of a memory HDBSCAN left outside every cluster."""


def memory_id(user_id: str, kind: str, sources: Sequence[str]) -> str:
    """The deterministic id of a memory.

    Args:
        user_id: the owner; part of the id so two users never share one.
        kind: the memory kind.
        sources: what the memory is built from, in order (turn ids, or a fact's text).

    Returns:
        32 hex characters.
    """
    h = hashlib.sha256()
    for part in (user_id, kind, *sources):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")  # unit separator: ("ab","c") and ("a","bc") must differ
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class MemoryRecord:
    """One stored memory.

    ``source_ids`` are the working-memory turn ids the memory derives from: a turn
    lists itself, a summary its batch, a cluster summary its most central turns, a
    fact nothing. ``vector`` is the normalised embedding of :func:`index_text`.
    """

    id: str
    user_id: str
    session_id: str
    kind: MemoryKind
    text: str
    created_at: float
    source_ids: tuple[str, ...] = ()
    cluster_id: int = CLUSTER_PENDING
    role: str = ""
    importance: float = 0.5
    vector: Any = field(default=None, repr=False, compare=False)
    """numpy float32 array of the embedding dimension, or None when not loaded."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict without the vector (the export format)."""
        out = asdict(self)
        out.pop("vector")
        out["source_ids"] = list(self.source_ids)
        return out


def _date(ts: float) -> str:
    # Day-month-year in words: matches how people ask ("in May 2023"), and BM25 sees it.
    return time.strftime("%d %B %Y", time.gmtime(ts)).lstrip("0")


def index_text(record: MemoryRecord) -> str:
    """The text that is embedded and BM25-indexed for a record.

    The date is prefixed because questions are often anchored in time ("what did I
    do in May?") and a turn's own text rarely says when it was said.

    Args:
        record: the memory.

    Returns:
        ``"<day month year>: <text>"``.
    """
    return f"{_date(record.created_at)}: {record.text}"


@dataclass(frozen=True)
class RetrievedMemory:
    """One search result."""

    id: str
    kind: MemoryKind
    text: str
    score: float
    """Fused reciprocal-rank score; comparable only within one search."""
    why: str
    """The signals that matched, e.g. ``"dense#2 lexical#1 context"``."""
    session_id: str = ""
    created_at: float = 0.0
    source_ids: tuple[str, ...] = ()
    role: str = ""
    cluster_id: int = CLUSTER_PENDING


@dataclass(frozen=True)
class ArchiveReport:
    """What one archival call did."""

    archived_turns: int = 0
    summaries: int = 0
    memory_ids: tuple[str, ...] = ()
    trimmed: int = 0
    """Turns removed from working memory (after Milvus acknowledged them)."""
    recluster_due: bool = False
    """Enough new memories since the last clustering run: schedule ``recluster``."""


@dataclass(frozen=True)
class ClusterReport:
    """What one clustering run found."""

    memories: int
    clusters: int
    noise: int
    seconds: float
    summaries: int = 0


@dataclass(frozen=True)
class MemoryPage:
    """One page of a listing, newest first."""

    items: list[MemoryRecord]
    next_page_token: str
    """Empty on the last page."""


def listing_order(rec: MemoryRecord) -> tuple[float, str]:
    """Sort key of listings: newest first, ties by id (stable across pages)."""
    return (-rec.created_at, rec.id)


def encode_page_token(key: tuple[float, str]) -> str:
    """An opaque page token: the listing key of the last item of a page."""
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> tuple[float, str]:
    """The listing key inside a page token.

    Raises:
        InvalidArgument: the token was not made by :func:`encode_page_token`.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        neg_created, mid = json.loads(raw)
        return (float(neg_created), str(mid))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidArgument("page_token", "is not a token returned by list") from exc


@dataclass(frozen=True)
class MemoryStats:
    """Counts for one user."""

    total: int
    by_kind: dict[str, int]
    sessions: int
    clusters: int
    unclustered: int
    hot: bool
    """True when the user's index is loaded in process."""
