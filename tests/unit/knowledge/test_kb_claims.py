"""Claim extraction from model answers, answer checking, and prompt facts."""

from __future__ import annotations

import pytest

from dmha.knowledge import (
    KnowledgeBase,
    Literal,
    Verdict,
    check_answer,
    entities_in,
    extract_claims,
    relevant_facts,
)


@pytest.fixture
def kb() -> KnowledgeBase:
    kb = KnowledgeBase()
    kb.tell(
        "fact: bob.job = doctor\nfact: bob.age = 40\nfact: alice.smart = true\n"
        "fact: carol.city = new_york\nfact: dave.color = red\nfact: dave.team = red\n"
        'fact: erin.motto = "Carpe diem"\n'
        "rule: if ?x.job = doctor then ?x.title = dr"
    )
    return kb


CLAIMS = [
    ("Bob's age is 41.", Literal("bob", "age", "41")),
    ("The job of Bob is doctor!", Literal("bob", "job", "doctor")),
    ("bob's job is not a doctor", Literal("bob", "job", "doctor", True)),
    ("Alice is not smart", Literal("alice", "smart", "true", True)),
    ("Alice is smart", Literal("alice", "smart", "true")),
    ("Bob is a doctor", Literal("bob", "job", "doctor")),
    ("Carol's city is New York", Literal("carol", "city", "new_york")),
    ("Erin's motto is Carpe diem", Literal("erin", "motto", '"Carpe diem"')),
    ("fact: bob.age = 39", Literal("bob", "age", "39")),
    ("deny: bob.job = doctor", Literal("bob", "job", "doctor", True)),
    # Not claims: unknown attribute, unknown value, ambiguous value, broken line, chat.
    ("Bob's hobby is chess", None),
    ("Bob is a nurse", None),
    ("Zed is red", None),
    ("fact: bob.age =", None),
    ("Hello there, how are you", None),
]


@pytest.mark.parametrize(("text", "expected"), CLAIMS)
def test_extract_claims(kb: KnowledgeBase, text: str, expected: Literal | None) -> None:
    claims = extract_claims(kb, text)
    assert [c.literal for c in claims] == ([expected] if expected else [])


def test_check_answer_flags_contradictions(kb: KnowledgeBase) -> None:
    checks = check_answer(
        kb,
        "Bob's age is 41. The job of bob is doctor. Alice is not smart.\nfact: bob.title = dr\nCarol's city is Paris.",
    )
    verdicts = {str(c.claim.literal): (c.answer.verdict, c.contradicted) for c in checks}
    assert verdicts == {
        "bob.age = 41": (Verdict.CONTRADICTED, True),
        "bob.job = doctor": (Verdict.ENTAILED, False),
        "not alice.smart = true": (Verdict.CONTRADICTED, True),
        "bob.title = dr": (Verdict.ENTAILED, False),
        "carol.city = paris": (Verdict.CONTRADICTED, True),
    }
    statement_claims = [c.claim for c in checks if c.claim.origin == "statement"]
    assert [c.text for c in statement_claims] == ["fact: bob.title = dr"]


def test_entities_and_relevant_facts(kb: KnowledgeBase) -> None:
    assert entities_in(kb, "What do Carol and Bob's friends in New York think?") == ["carol", "bob"]
    lines = relevant_facts(kb, "tell me about bob")
    assert lines == ["fact: bob.age = 40", "fact: bob.job = doctor", "fact: bob.title = dr"]
    assert relevant_facts(kb, "tell me about bob", limit=1) == ["fact: bob.age = 40"]
    assert relevant_facts(kb, "nobody known here") == []
