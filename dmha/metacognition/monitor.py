"""The consistency monitor and the self-correction loop.

Every reply gets a consistency score from named signals:

- ``kb_contradiction``: 1 when the knowledge base contradicts a claim of the reply;
- ``memory_disagreement``: how little the reply overlaps the memories retrieved for
  it (0 when none were retrieved);
- ``low_confidence``: the model's mean token log-probability mapped to [0, 1].

The score is their weighted mean (weights in config). Above the threshold the
loop runs: regenerate with the relevant KB statements as explicit constraints and
check again (bounded attempts); if still inconsistent, answer plainly from the
KB's verdict. Then memory is reorganised (the session's working memory is
summarised into long-term memory and cleared) and, optionally, the corrected
answer becomes a learning candidate. Every firing is recorded as an event.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from dmha.config import MetacognitionConfig
from dmha.errors import InvalidArgument, RedisUnavailable
from dmha.executor import run_in_background
from dmha.ids import check_id, redis_key
from dmha.llm.base import GenerationResult
from dmha.llm.prompt import ContextBlock
from dmha.redis_connection import RedisConnection
from dmha.turn import ClaimOutcome, MemoryRef, MonitorEvent, Turn, TurnState

__all__ = ["ClaimChecker", "EventStore", "MonitorHook", "RecordedEvent", "ScoreEntry", "score_signals"]

log = logging.getLogger(__name__)

_DEFAULT_LIMIT = 50
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "to",
        "of",
        "and",
        "or",
        "in",
        "on",
        "at",
        "for",
        "with",
        "it",
        "this",
        "that",
        "i",
        "you",
        "he",
        "she",
        "they",
        "we",
        "my",
        "your",
    ]
)
CONSTRAINTS_TITLE = "Constraints (true statements; the answer must agree with every one)"


class ClaimChecker(Protocol):
    """What the monitor needs from the knowledge base."""

    async def check(self, turn: TurnState, text: str) -> list[ClaimOutcome]:
        """Verdicts on the claims of ``text``."""
        ...

    async def constraints(self, turn: TurnState, text: str) -> list[str]:
        """Statement lines the reply must respect."""
        ...


@dataclass(frozen=True)
class RecordedEvent:
    """A monitor firing as stored and listed."""

    event: MonitorEvent
    user_id: str
    session_id: str
    turn_id: str
    created_at: float
    original_text: str
    final_text: str


@dataclass(frozen=True)
class ScoreEntry:
    """The monitor's score of one reply, whether it fired or not (the score log).

    Attributes:
        turn_id: the stored assistant turn.
        session_id: its session.
        created_at: Unix time.
        score: the inconsistency score of the first reply.
        signals: its named signals.
        fired: whether the score reached the threshold (an event was recorded).
        outcome: ``passed``, or the firing's outcome.
    """

    turn_id: str
    session_id: str
    created_at: float
    score: float
    signals: dict[str, float]
    fired: bool
    outcome: str


class EventStore:
    """Monitor events per user in Redis (newest first, capped), and the score log:
    every reviewed reply's score, so that scores can be seen against the threshold.

    Args:
        conn: the Redis connection.
        cap: events kept per user.
    """

    def __init__(self, conn: RedisConnection, cap: int = 1000) -> None:
        self._conn = conn
        self._cap = cap

    @property
    def cap(self) -> int:
        """Events (and scores) kept per user."""
        return self._cap

    def _key(self, user_id: str) -> str:
        return redis_key("dmha:meta:events", user_id, tag=self._conn.cluster)

    def _scores_key(self, user_id: str) -> str:
        return redis_key("dmha:meta:scores", user_id, tag=self._conn.cluster)

    def _push(self, key: str, raw: str) -> None:
        def work(c):
            pipe = c.pipeline(transaction=True)
            pipe.lpush(key, raw)
            pipe.ltrim(key, 0, self._cap - 1)
            pipe.execute()

        self._conn.call(work)

    def add_score(self, user_id: str, entry: ScoreEntry) -> None:
        """Append one reply's score to the user's score log (blocking)."""
        self._push(self._scores_key(user_id), json.dumps(asdict(entry), ensure_ascii=False))

    def scores(self, user_id: str, limit: int | None = None) -> list[ScoreEntry]:
        """The user's newest scores (blocking).

        Args:
            user_id: the user.
            limit: the most entries returned, 1..``cap`` (default: all kept).

        Returns:
            Newest first.

        Raises:
            InvalidArgument: a bad limit.
            RedisUnavailable: Redis is down.
        """
        limit = self._cap if limit is None else limit
        if not 1 <= limit <= self._cap:
            raise InvalidArgument("limit", f"is {limit}; must be between 1 and {self._cap}")
        raw = self._conn.call(lambda c: c.lrange(self._scores_key(user_id), 0, limit - 1))
        return [ScoreEntry(**json.loads(item)) for item in raw]

    def add(self, rec: RecordedEvent) -> None:
        """Store one event (blocking)."""
        self._push(self._key(rec.user_id), json.dumps(asdict(rec), ensure_ascii=False))

    def history(
        self, user_id: str, limit: int | None = None, session_id: str = "", include_passing: bool = False
    ) -> list[RecordedEvent]:
        """The user's events and, optionally, the scores of the replies that passed (blocking).

        A passing reply is listed as an event with outcome ``passed``, no actions and
        no texts, under the id ``passed:<turn id>``.

        Args:
            user_id: the user.
            limit: the most entries returned, 1..``cap`` (default 50).
            session_id: only this session's ("" for all).
            include_passing: add the passing replies from the score log.

        Returns:
            Newest first.

        Raises:
            InvalidArgument: a bad limit or malformed session id.
            RedisUnavailable: Redis is down.
        """
        events = self.list(user_id, limit, session_id)
        if not include_passing:
            return events
        passed = [
            RecordedEvent(
                MonitorEvent(f"passed:{s.turn_id}", s.score, s.signals, (), "passed"),
                user_id,
                s.session_id,
                s.turn_id,
                s.created_at,
                "",
                "",
            )
            for s in self.scores(user_id)
            if not s.fired and (not session_id or s.session_id == session_id)
        ]
        merged = sorted([*events, *passed], key=lambda r: (r.created_at, r.turn_id), reverse=True)
        return merged[: limit or _DEFAULT_LIMIT]

    def list(self, user_id: str, limit: int | None = None, session_id: str = "") -> list[RecordedEvent]:
        """The user's newest events, optionally of one session (blocking).

        Args:
            user_id: the user.
            limit: the most events returned, 1..``cap`` (default 50).
            session_id: only this session's events ("" for all).

        Returns:
            Newest first.

        Raises:
            InvalidArgument: a bad limit or malformed session id.
            RedisUnavailable: Redis is down.
        """
        limit = _DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= self._cap:
            raise InvalidArgument("limit", f"is {limit}; must be between 1 and {self._cap}")
        if session_id:
            check_id(session_id, "session_id")
        raw = self._conn.call(lambda c: c.lrange(self._key(user_id), 0, self._cap - 1))
        out: list[RecordedEvent] = []
        for item in raw:
            data = json.loads(item)
            data["event"]["actions"] = tuple(data["event"]["actions"])
            rec = RecordedEvent(**{**data, "event": MonitorEvent(**data["event"])})
            if not session_id or rec.session_id == session_id:
                out.append(rec)
            if len(out) >= limit:
                break
        return out


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def score_signals(
    cfg: MetacognitionConfig, claims: Sequence[ClaimOutcome], memories: Sequence[MemoryRef], reply: GenerationResult
) -> tuple[float, dict[str, float]]:
    """The consistency score of a reply and its named signals.

    Args:
        cfg: weights.
        claims: the reply's claims as checked against the KB.
        memories: memories retrieved for the turn.
        reply: the generation (its mean token log-probability).

    Returns:
        ``(score in [0, 1], signals)``; higher means less consistent.
    """
    kb = 1.0 if any(c.verdict == "CONTRADICTED" for c in claims) else 0.0
    mem = 0.0
    if memories and reply.text.strip():
        words = _content_words(reply.text)
        best = max((len(words & _content_words(m.text)) / max(1, len(words)) for m in memories), default=0.0)
        mem = 1.0 - min(1.0, best * 2)  # half the reply's content words in one memory = full agreement
    conf = min(1.0, max(0.0, -reply.mean_logprob / 4.0)) if reply.completion_tokens else 0.0
    signals = {"kb_contradiction": kb, "memory_disagreement": mem, "low_confidence": conf}
    weights = {
        "kb_contradiction": cfg.weight_kb,
        "memory_disagreement": cfg.weight_memory,
        "low_confidence": cfg.weight_confidence,
    }
    total = sum(weights.values()) or 1.0
    return sum(weights[k] * v for k, v in signals.items()) / total, signals


def _kb_answer(claims: Sequence[ClaimOutcome]) -> str:
    """A plain answer from the KB's verdicts on the contradicted claims."""
    lines = []
    for c in claims:
        if c.verdict == "CONTRADICTED":
            basis = "; ".join(c.support) or "what I was told"
            lines.append(f"It is not the case that {c.claim} (I know: {basis}).")
    return " ".join(lines)


class MonitorHook:
    """:class:`~dmha.context.TurnHook` that scores every reply and corrects inconsistent ones.

    Args:
        cfg: weights, threshold, attempts.
        checker: the knowledge base's claim checker.
        events: where firings are recorded.
        reorganise: ``(user_id, session_id) -> None`` (blocking) that summarises the
            session's working memory into long-term memory and clears it; None when
            long-term memory is off.
        candidate_sink: ``(user_id, input, target, kb_entailed) -> None`` (blocking) that
            hands a correction to the learner (which decides whether to learn it or keep
            it for review); None to skip.
    """

    def __init__(
        self,
        cfg: MetacognitionConfig,
        checker: ClaimChecker,
        events: EventStore,
        reorganise: Callable[[str, str], object] | None = None,
        candidate_sink: Callable[[str, str, str, bool], object] | None = None,
    ) -> None:
        self._cfg = cfg
        self._checker = checker
        self._events = events
        self._reorganise = reorganise
        self._candidate_sink = candidate_sink

    async def prepare(self, turn: TurnState) -> None:
        return None

    async def review(self, turn: TurnState, reply: GenerationResult, regenerate) -> GenerationResult:
        score, signals = score_signals(self._cfg, turn.claims, turn.memories, reply)
        turn.consistency = (round(score, 4), signals)
        if score < self._cfg.threshold:
            return reply
        original, actions, outcome = reply.text, [], "flagged"
        if signals["kb_contradiction"]:
            outcome = "unresolved"
            for attempt in range(1, self._cfg.max_attempts + 1):
                lines = await self._checker.constraints(turn, reply.text)
                lines += [s for c in turn.claims if c.verdict == "CONTRADICTED" for s in c.support if s not in lines]
                candidate = await regenerate([ContextBlock(CONSTRAINTS_TITLE, tuple(lines))])
                actions.append(f"regenerated_with_constraints:{attempt}")
                claims = await self._checker.check(turn, candidate.text)
                if not any(c.verdict == "CONTRADICTED" for c in claims):
                    reply, turn.claims, outcome = candidate, claims, "corrected"
                    break
            else:
                text = _kb_answer(turn.claims)
                reply = GenerationResult(text, reply.prompt_tokens, 0, "stop", reply.model_version)
                actions.append("answered_from_kb")
                outcome = "answered_from_kb"
            if self._reorganise is not None:
                actions.append("memory_reorganised")
            if self._candidate_sink is not None and self._cfg.enqueue_candidates and outcome == "corrected":
                actions.append("learning_candidate")
                if turn.claims and all(c.verdict == "ENTAILED" for c in turn.claims):
                    # The learner may queue it for training without review (see OnlineLearning).
                    actions.append("kb_entailed")
        event = MonitorEvent(uuid.uuid4().hex[:16], round(score, 4), signals, tuple(actions), outcome)
        turn.events.append(event)
        turn.reviewed_texts = (original, reply.text)
        return reply

    def committed(self, turn: TurnState, stored: Sequence[Turn]) -> None:
        if turn.consistency is None:
            return
        user, session, turn_id, now = turn.principal.user_id, turn.session_id, stored[-1].turn_id, time.time()
        fired = turn.reviewed_texts is not None and bool(turn.events)
        score, signals = turn.consistency
        entry = ScoreEntry(turn_id, session, now, score, signals, fired, turn.events[-1].outcome if fired else "passed")
        rec: RecordedEvent | None = None
        if fired:
            assert turn.reviewed_texts is not None
            event, (original, final) = turn.events[-1], turn.reviewed_texts
            rec = RecordedEvent(event, user, session, turn_id, now, original, final)

        def follow_up() -> None:
            try:
                self._events.add_score(user, entry)
            except RedisUnavailable:
                # The score log is a record of the monitor, not the user's data: a lost
                # entry is logged, and the firing (if any) is still recorded below.
                log.warning("score of turn %s not logged: Redis is unavailable", turn_id)
            if rec is None:
                return
            self._events.add(rec)
            if "memory_reorganised" in rec.event.actions and self._reorganise is not None:
                self._reorganise(user, session)
            if "learning_candidate" in rec.event.actions and self._candidate_sink is not None:
                self._candidate_sink(user, turn.chat_text, rec.final_text, "kb_entailed" in rec.event.actions)

        # Never on the request path: the reply is already on its way.
        run_in_background(follow_up)
