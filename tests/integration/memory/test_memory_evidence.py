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
    for n, lines in enumerate(SESSIONS):
        session = f"s{n}"
        for text in lines:
            clock += 30
            wm.append([Turn(new_turn_id(), "maya", session, "user", text, clock)])
            ltm.archive_overflow("maya", session)
        ltm.archive_session("maya", session)
        clock += 7 * 86400
    assert ltm.stats("maya").by_kind["turn"] == sum(len(s) for s in SESSIONS)
    budget = cfg.retrieval.token_budget
    for question, evidence in QUESTIONS:
        found = ltm.search("maya", question, cfg.retrieval.top_k, budget)
        assert sum(approx_token_count(m.text) for m in found) <= budget
        # Its words come back: the turn itself, or a summary quoting it (packing then
        # leaves the turn out rather than spend the budget twice).
        assert any(evidence in m.text for m in found), (question, [m.text for m in found])
