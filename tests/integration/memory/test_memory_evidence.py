"""Issue 12: a conversation archived through the server's path (real Redis working memory,
archival with summaries, Milvus Lite, MiniLM) gives back the words of its evidence turns
within the default prompt budget, for hand-written questions -- including answers that
share no word with the question and are found beside the line that does."""

from __future__ import annotations

import pytest

from dmha.config import MemoryConfig
from dmha.memory.retrieval import approx_token_count
from dmha.turn import Turn, new_turn_id

pytestmark = pytest.mark.integration

SESSIONS = [
    [
        "Maya: Hi Leo! How was your weekend?",
        "Leo: Pretty busy. I finally finished the first draft of my screenplay.",
        "Maya: Amazing! What genre is it?",
        "Leo: It's a mix of drama and romance, set in a lighthouse.",
        "Maya: I love that. I started volunteering at the animal shelter on Saturdays.",
        "Leo: That's great, which animals do you look after?",
        "Maya: Mostly senior dogs. There's a greyhound called Biscuit I adore.",
        "Leo: Biscuit is a perfect name for a greyhound.",
        "Maya: Ha, he eats like one too.",
        "Leo: Talk soon!",
    ],
    [
        "Leo: Hey Maya, guess what happened on Friday?",
        "Maya: Tell me!",
        "Leo: A producer from Lisbon read my script and wants to meet.",
        "Maya: Wow, congratulations! Where will you meet?",
        "Leo: At a small cafe near the harbour next month.",
        "Maya: I adopted Biscuit last week, by the way.",
        "Leo: No way! How is he settling in?",
        "Maya: He sleeps all day on the sofa and snores.",
        "Leo: Sounds like a happy dog.",
        "Maya: He really is. Good luck with the producer!",
    ],
]

# Small talk between the sessions that matter, so that the budget has to choose.
_PLACES = ["the market", "the gym", "my aunt's house", "the library", "the beach", "the office", "a concert"]
_THINGS = ["fresh bread", "a new kettle", "running shoes", "a board game", "tomato seeds", "a jigsaw puzzle"]


def _filler(n: int, i: int) -> str:
    if i % 2 == 0:
        return f"Maya: On Tuesday I went to {_PLACES[(n + i) % 7]} and bought {_THINGS[(n * 3 + i) % 6]}."
    return f"Leo: Nice, I spent the evening at {_PLACES[(n * 2 + i) % 7]} thinking about {_THINGS[i % 6]}."


FILLER = [[_filler(n, i) for i in range(10)] for n in range(6)]

QUESTIONS = [
    ("What genre is Leo's screenplay?", "It's a mix of drama and romance"),
    ("Which dog did Maya adopt?", "I adopted Biscuit last week"),
    ("Where does the producer come from?", "A producer from Lisbon"),
    ("Where will Leo meet the producer?", "At a small cafe near the harbour"),
    ("What animals does Maya look after at the shelter?", "Mostly senior dogs"),
]


def test_archived_conversation_returns_its_evidence_within_the_budget(make_memory):
    cfg = MemoryConfig()
    ltm, wm = make_memory(cfg)
    clock = 1.7e9
    for n, lines in enumerate([FILLER[0], SESSIONS[0], *FILLER[1:4], SESSIONS[1], *FILLER[4:]]):
        session = f"s{n}"
        for text in lines:
            clock += 30
            wm.append([Turn(new_turn_id(), "maya", session, "user", text, clock)])
            ltm.archive_overflow("maya", session)
        ltm.archive_session("maya", session)
        clock += 7 * 86400
    assert ltm.stats("maya").by_kind["turn"] == 80
    budget = 160  # room for a handful of turns out of 80
    for question, evidence in QUESTIONS:
        found = ltm.search("maya", question, cfg.retrieval.top_k, budget)
        assert sum(approx_token_count(m.text) for m in found) <= budget
        # Its words come back: the turn itself, or a summary quoting it (packing then
        # leaves the turn out rather than spend the budget twice).
        assert any(evidence in m.text for m in found), (question, [m.text for m in found])
