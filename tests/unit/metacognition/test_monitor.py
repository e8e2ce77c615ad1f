"""The monitor's scoring and self-correction loop (fake checker and regenerate: unit tier)."""

from __future__ import annotations

import pytest

from dmha.auth.tokens import Principal
from dmha.config import MetacognitionConfig
from dmha.llm.base import GenerationOptions, GenerationResult
from dmha.metacognition.monitor import MonitorHook, score_signals
from dmha.turn import ClaimOutcome, MemoryRef, TurnState

BAD = ClaimOutcome("bob.age = 31", "CONTRADICTED", ("fact: bob.age = 30",))
GOOD = ClaimOutcome("bob.age = 30", "ENTAILED", ("fact: bob.age = 30",))


def reply(text, logprob=-0.2):
    return GenerationResult(text, 10, 5, "stop", "base", mean_logprob=logprob)


class Checker:
    def __init__(self, verdicts):
        self.verdicts = verdicts  # text -> claims
        self.asked = []

    async def check(self, turn, text):
        self.asked.append(text)
        return self.verdicts.get(text, [])

    async def constraints(self, turn, text):
        return ["fact: bob.age = 30"]


def turn(claims=()):
    t = TurnState(
        Principal("alice", frozenset({"user"})), "s1", "How old is Bob?", "How old is Bob?", GenerationOptions()
    )
    t.claims = list(claims)
    return t


def test_signals_and_weights():
    cfg = MetacognitionConfig()
    score, sig = score_signals(cfg, [GOOD], [], reply("Bob is 30."))
    assert sig["kb_contradiction"] == 0 and score < cfg.threshold
    score, sig = score_signals(cfg, [BAD], [], reply("Bob is 31."))
    assert sig["kb_contradiction"] == 1 and score >= cfg.threshold
    mem = [MemoryRef("m1", "turn", "Bob is thirty years old and lives in Paris", 1.0, "dense")]
    _, sig = score_signals(cfg, [], mem, reply("Bob thirty years Paris"))
    assert sig["memory_disagreement"] == 0
    _, sig = score_signals(cfg, [], mem, reply("Quantum chromodynamics explains gluons"))
    assert sig["memory_disagreement"] == 1
    _, sig = score_signals(cfg, [], [], reply("x", logprob=-8))
    assert sig["low_confidence"] == 1


async def test_consistent_reply_passes_untouched():
    hook = MonitorHook(MetacognitionConfig(), Checker({}), events=None)
    t = turn([GOOD])
    out = await hook.review(t, reply("Bob is 30."), regenerate=None)
    assert out.text == "Bob is 30." and t.events == []


async def test_contradiction_is_corrected_by_regeneration():
    checker = Checker({"Bob is 30.": [GOOD]})
    seen_blocks = []

    async def regenerate(blocks):
        seen_blocks.extend(blocks)
        return reply("Bob is 30.")

    hook = MonitorHook(MetacognitionConfig(), checker, events=None, reorganise=lambda u, s: None)
    t = turn([BAD])
    out = await hook.review(t, reply("Bob is 31."), regenerate)
    assert out.text == "Bob is 30."
    assert "fact: bob.age = 30" in seen_blocks[0].lines
    (event,) = t.events
    assert event.outcome == "corrected"
    assert event.actions == ("regenerated_with_constraints:1", "memory_reorganised")
    assert t.claims == [GOOD]


async def test_still_inconsistent_answers_from_the_kb():
    async def regenerate(blocks):
        return reply("Bob is 31, really.")

    checker = Checker({"Bob is 31, really.": [BAD]})
    hook = MonitorHook(MetacognitionConfig(max_attempts=2), checker, events=None)
    t = turn([BAD])
    out = await hook.review(t, reply("Bob is 31."), regenerate)
    assert "fact: bob.age = 30" in out.text and "not the case" in out.text
    assert t.events[0].outcome == "answered_from_kb"
    assert t.events[0].actions[:2] == ("regenerated_with_constraints:1", "regenerated_with_constraints:2")
    assert len(checker.asked) == 2


@pytest.mark.parametrize("attempts", [0])
async def test_zero_attempts_goes_straight_to_the_kb(attempts):
    hook = MonitorHook(MetacognitionConfig(max_attempts=attempts), Checker({}), events=None)
    t = turn([BAD])
    out = await hook.review(t, reply("Bob is 31."), regenerate=None)
    assert t.events[0].outcome == "answered_from_kb" and "bob.age = 30" in out.text


class _Events:
    def __init__(self):
        self.added = []

    def add(self, rec):
        self.added.append(rec)


async def test_an_uncommitted_review_is_never_recorded_for_another_turn(monkeypatch):
    """Issue 11, finding 4: state keyed by id(turn) was picked up by a later turn at the
    same address (another user's) when the first turn was never stored."""
    from dmha.metacognition import monitor

    # Address reuse made deterministic: every object "lives" at the same address.
    monkeypatch.setattr(monitor, "id", lambda obj: 1, raising=False)
    monkeypatch.setattr(monitor, "run_in_background", lambda fn: fn())
    events = _Events()
    hook = MonitorHook(MetacognitionConfig(max_attempts=0), Checker({}), events=events)
    await hook.review(turn([BAD]), reply("Bob is 31."), regenerate=None)  # never stored
    bob_turn = TurnState(Principal("bob", frozenset({"user"})), "s2", "hi", "hi", GenerationOptions())
    hook.committed(bob_turn, [_Stored("t-bob")])
    assert events.added == []


class _Stored:
    def __init__(self, turn_id):
        self.turn_id = turn_id


@pytest.mark.parametrize(("claims", "entailed"), [([GOOD], True), ([], False)])
async def test_a_correction_says_whether_the_kb_entails_it(claims, entailed):
    # The learner queues KB-entailed corrections for training; anything else waits for
    # a trainer. The monitor only reports which it is.
    async def regenerate(blocks):
        return reply("Bob is 30.")

    hook = MonitorHook(MetacognitionConfig(), Checker({"Bob is 30.": claims}), events=None, candidate_sink=print)
    t = turn([BAD])
    await hook.review(t, reply("Bob is 31."), regenerate)
    (event,) = t.events
    assert event.outcome == "corrected" and "learning_candidate" in event.actions
    assert ("kb_entailed" in event.actions) is entailed


class _Scores(_Events):
    def __init__(self):
        super().__init__()
        self.scores = []

    def add_score(self, user_id, entry):
        self.scores.append((user_id, entry))


async def test_every_reviewed_reply_is_scored_in_the_log(monkeypatch):
    """The score log holds passing replies too, so scores can be seen against the threshold."""
    from dmha.metacognition import monitor

    monkeypatch.setattr(monitor, "run_in_background", lambda fn: fn())
    events = _Scores()
    hook = MonitorHook(MetacognitionConfig(max_attempts=0), Checker({}), events=events)
    calm = turn([GOOD])
    await hook.review(calm, reply("Bob is 30."), regenerate=None)
    hook.committed(calm, [_Stored("t1")])
    bad = turn([BAD])
    await hook.review(bad, reply("Bob is 31."), regenerate=None)
    hook.committed(bad, [_Stored("t2")])
    (u1, first), (u2, second) = events.scores
    assert u1 == u2 == "alice"
    assert (first.turn_id, first.fired, first.outcome) == ("t1", False, "passed")
    assert first.score < MetacognitionConfig().threshold <= second.score
    assert (second.turn_id, second.fired, second.outcome) == ("t2", True, "answered_from_kb")
    assert [r.turn_id for r in events.added] == ["t2"]  # only the firing is an event
    unreviewed = turn()
    hook.committed(unreviewed, [_Stored("t3")])  # a statements-only turn has no reply to score
    assert len(events.scores) == 2
