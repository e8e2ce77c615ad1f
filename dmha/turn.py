"""Turns: a stored message (:class:`Turn`), what one chat turn carries through the
pipeline (:class:`TurnState`), and what it reports back (:class:`TurnResult`).

These are transport- and storage-free records: working memory stores :class:`Turn`
as JSON, the gRPC servicer copies the others into protos. Keeping them here (not in
``dmha.memory.working``) lets summarisers, hooks and the server use a turn without
importing Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

from dmha.auth.tokens import Principal
from dmha.llm.base import GenerationOptions
from dmha.llm.prompt import ContextBlock

__all__ = [
    "ClaimOutcome",
    "MemoryRef",
    "MonitorEvent",
    "Role",
    "StatementOutcome",
    "Turn",
    "TurnResult",
    "TurnState",
    "as_role",
    "new_turn_id",
]

Role = Literal["user", "assistant", "system"]
"""Who said a stored message."""


_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}


def as_role(value: str) -> Role:
    """A stored role name as a :data:`Role` (anything unknown was said by the user)."""
    return _ROLES.get(value, "user")


def new_turn_id() -> str:
    """A sortable, unique turn id (time prefix, random suffix)."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as stored."""

    turn_id: str
    user_id: str
    session_id: str
    role: Role
    text: str
    created_at: float

    def to_json(self) -> str:
        """Serialise for Redis."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        """Parse a record written by :meth:`to_json`."""
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class MemoryRef:
    """A long-term memory retrieved into the prompt, and why."""

    id: str
    kind: str
    text: str
    score: float
    why: str


@dataclass(frozen=True)
class StatementOutcome:
    """A knowledge-base statement from the message and what happened to it."""

    statement: str
    status: str
    id: str = ""
    reason: str = ""
    conflicts_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClaimOutcome:
    """A claim of the reply checked against the knowledge base."""

    claim: str
    verdict: str
    support: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitorEvent:
    """One firing of the consistency monitor."""

    id: str
    score: float
    signals: dict[str, float]
    actions: tuple[str, ...]
    outcome: str


@dataclass
class TurnState:
    """Mutable state of a turn while hooks work on it."""

    principal: Principal
    session_id: str
    message: str
    """The message as sent (statement lines included)."""
    chat_text: str
    """What the model sees as the user's message (statement lines removed)."""
    options: GenerationOptions
    request_id: str = ""
    history: tuple[Turn, ...] = ()
    """The working-memory window the prompt shows before the message, oldest first."""
    blocks: list[ContextBlock] = field(default_factory=list)
    memories: list[MemoryRef] = field(default_factory=list)
    statements: list[StatementOutcome] = field(default_factory=list)
    claims: list[ClaimOutcome] = field(default_factory=list)
    events: list[MonitorEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notice: str = ""
    reviewed_texts: tuple[str, str] | None = None
    """(original, final) reply of the monitor's review, recorded when the turn is
    stored. It lives on the turn, not in a process-wide map keyed by ``id(turn)``:
    a turn that is never stored (client gone, failed write) leaves nothing behind
    for a later turn, possibly another user's, to pick up."""
    consistency: tuple[float, dict[str, float]] | None = None
    """(score, signals) of the monitor's review of the first reply, firing or not;
    recorded in the score log when the turn is stored."""


@dataclass(frozen=True)
class TurnResult:
    """The end of a turn: the stored reply and everything the frontend may show."""

    session_id: str
    user_turn_id: str
    assistant_turn_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    model_version: str
    request_id: str
    memories: tuple[MemoryRef, ...] = ()
    statements: tuple[StatementOutcome, ...] = ()
    claims: tuple[ClaimOutcome, ...] = ()
    events: tuple[MonitorEvent, ...] = ()
    warnings: tuple[str, ...] = ()
    notice: str = ""
    mean_logprob: float = 0.0
