"""Listing and counting one user's memories: pages newest first, and their stats.

A page token is the listing key of the last item shown, so a page continues after
that key even when memories were added or deleted between calls (no offsets).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from dmha.errors import InvalidArgument
from dmha.memory.records import (
    CLUSTER_PENDING,
    KINDS,
    MemoryPage,
    MemoryRecord,
    MemoryStats,
    decode_page_token,
    encode_page_token,
    listing_order,
)

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "PageRequest", "check_kind", "count_memories"]

DEFAULT_PAGE = 50
MAX_PAGE = 1000


def check_kind(kind: str | None) -> str | None:
    """A memory-kind filter, checked.

    Args:
        kind: a kind, or None for every kind.

    Returns:
        The kind unchanged.

    Raises:
        InvalidArgument: not one of the memory kinds.
    """
    if kind is not None and kind not in KINDS:
        raise InvalidArgument("kind", f"is {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class PageRequest:
    """One checked request for a page of memories."""

    size: int
    after: tuple[float, str] | None
    kind: str | None
    session_id: str | None

    @classmethod
    def parse(cls, page_size: int | None, page_token: str, kind: str | None, session_id: str | None) -> PageRequest:
        """Check a page request's fields.

        Args:
            page_size: 1..``MAX_PAGE``; None = ``DEFAULT_PAGE``.
            page_token: ``next_page_token`` of the previous page ("" for the first).
            kind: only this kind (None: all).
            session_id: only this session (None: all; the caller checks the id).

        Returns:
            The request.

        Raises:
            InvalidArgument: bad page size, kind or token.
        """
        size = DEFAULT_PAGE if page_size is None else page_size
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"is {size}; must be between 1 and {MAX_PAGE}")
        check_kind(kind)
        after = decode_page_token(page_token) if page_token else None
        return cls(size=size, after=after, kind=kind, session_id=session_id)

    def select(self, records: Iterable[MemoryRecord]) -> MemoryPage:
        """The requested page of a user's memories.

        Args:
            records: every memory of the user, in any order.

        Returns:
            The page, newest first, and the token of the next one ("" at the end).
        """
        chosen = [
            r
            for r in records
            if (self.kind is None or r.kind == self.kind)
            and (self.session_id is None or r.session_id == self.session_id)
        ]
        chosen.sort(key=listing_order)
        keys = [listing_order(r) for r in chosen]
        start = bisect.bisect_right(keys, self.after) if self.after is not None else 0
        page = chosen[start : start + self.size]
        more = start + self.size < len(chosen)
        token = encode_page_token(listing_order(page[-1])) if more and page else ""
        return MemoryPage(items=page, next_page_token=token)


def count_memories(records: Iterable[MemoryRecord], hot: bool) -> MemoryStats:
    """Counts of a user's memories.

    Args:
        records: every memory of the user.
        hot: whether the user's hot index is loaded (reported as is).

    Returns:
        Totals by kind, sessions, clusters and memories not yet clustered.
    """
    records = list(records)
    by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
    for rec in records:
        by_kind[rec.kind] = by_kind.get(rec.kind, 0) + 1
    return MemoryStats(
        total=len(records),
        by_kind=by_kind,
        sessions=len({r.session_id for r in records if r.session_id}),
        clusters=len({r.cluster_id for r in records if r.kind == "cluster_summary"}),
        unclustered=sum(r.cluster_id == CLUSTER_PENDING and r.kind != "cluster_summary" for r in records),
        hot=hot,
    )
