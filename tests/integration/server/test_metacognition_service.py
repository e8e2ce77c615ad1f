"""MetacognitionService.ListEvents over a real channel and real Redis."""

from __future__ import annotations

import time

import pytest

from dmha.metacognition.monitor import RecordedEvent
from dmha.turn import MonitorEvent
from dmha_client import errors

pytestmark = pytest.mark.integration


def event(user: str, session: str, n: int) -> RecordedEvent:
    ev = MonitorEvent(
        f"e{n}", 0.7, {"kb_contradiction": 1.0, "low_confidence": 0.1}, ("answered_from_kb",), "answered_from_kb"
    )
    return RecordedEvent(ev, user, session, f"t{n}", time.time(), "Bob is 31.", "It is not the case that bob.age = 31.")


async def test_events_are_listed_per_user_newest_first(live):
    for n, (user, session) in enumerate([("alice", "s1"), ("alice", "s2"), ("bob", "s1")]):
        live.runtime.events.add(event(user, session, n))
    async with live.client("alice") as alice, live.client("carol") as carol:
        events = await alice.monitor_events()
        assert [e.event.id for e in events] == ["e1", "e0"]
        assert events[0].event.signals["kb_contradiction"] == 1.0 and events[0].final_text.startswith("It is not")
        assert [e.event.id for e in await alice.monitor_events(session_id="s1")] == ["e0"]
        assert await carol.monitor_events() == []
        with pytest.raises(errors.InvalidArgument, match="limit"):
            await alice.monitor_events(limit=100000)


async def test_passing_replies_are_listed_from_the_score_log_on_request(live):
    from dmha.metacognition import ScoreEntry

    now = time.time()
    live.runtime.events.add(event("alice", "s1", 7))  # a firing (its score entry says fired)
    live.runtime.events.add_score("alice", ScoreEntry("t7", "s1", now, 0.7, {"kb_contradiction": 1.0}, True, "x"))
    live.runtime.events.add_score(
        "alice", ScoreEntry("t8", "s1", now + 1, 0.1, {"low_confidence": 0.4}, False, "passed")
    )
    async with live.client("alice") as alice, live.client("bob") as bob:
        assert [e.turn_id for e in await alice.monitor_events()] == ["t7"]  # firings only, as before
        both = await alice.monitor_events(include_passing=True)
        assert [(e.turn_id, e.event.outcome) for e in both] == [("t8", "passed"), ("t7", "answered_from_kb")]
        assert both[0].event.signals["low_confidence"] == pytest.approx(0.4) and not both[0].event.actions
        assert [e.turn_id for e in await alice.monitor_events(limit=1, include_passing=True)] == ["t8"]
        assert await bob.monitor_events(include_passing=True) == []
