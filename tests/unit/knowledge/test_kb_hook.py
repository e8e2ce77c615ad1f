"""KnowledgeHook: statements in a message are told, facts reach the prompt, claims are checked."""

from __future__ import annotations

from dmha.auth.tokens import Principal
from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.hook import FACTS_TITLE, KnowledgeHook, fact_sentence
from dmha.llm.base import GenerationOptions, GenerationResult
from dmha.turn import TurnState


def turn(message: str, session: str = "s1", user: str = "alice", *roles: str) -> TurnState:
    principal = Principal(user, frozenset(roles or ("user",)))
    return TurnState(principal, session, message, message, GenerationOptions())


def reply(text: str) -> GenerationResult:
    return GenerationResult(text, 1, 1, "stop", "v0")


async def never(extra):  # the KB hook must not regenerate
    raise AssertionError("regenerate called")


async def test_statement_lines_are_told_and_removed_from_the_chat_text():
    hook = KnowledgeHook(KnowledgeBank())
    t = turn("fact: bob.age = 30\nHow old is Bob?")
    await hook.prepare(t)
    (outcome,) = t.statements
    assert outcome.status == "accepted" and outcome.id
    # Stored with the default scope and the chat as its source.
    assert outcome.statement == 'fact: bob.age = 30  [scope=user, source="chat:s1"]'
    assert t.notice.startswith("1 statement(s) accepted")
    assert t.chat_text == "How old is Bob?"
    (block,) = t.blocks
    assert block.title == FACTS_TITLE and block.lines == ("Bob's age is 30.",)


async def test_statements_only_leave_no_chat_text_and_rejections_are_explained():
    hook = KnowledgeHook(KnowledgeBank())
    await hook.prepare(turn("fact: bob.age = 30"))
    t = turn("fact: bob.age = 31 [confidence=0.5]")
    await hook.prepare(t)
    assert t.chat_text == ""
    (outcome,) = t.statements
    assert outcome.status == "rejected" and outcome.reason and outcome.conflicts_with
    assert "rejected" in t.notice


async def test_plain_message_tells_nothing_and_gets_only_relevant_facts():
    bank = KnowledgeBank()
    bank.for_user("alice").tell("fact: bob.age = 30\nfact: carol.age = 40")
    hook = KnowledgeHook(bank)
    t = turn("How old is Carol?")
    await hook.prepare(t)
    assert t.statements == [] and t.notice == "" and t.chat_text == "How old is Carol?"
    lines = [line for b in t.blocks for line in b.lines]
    assert lines == ["Carol's age is 40."]


async def test_review_records_contradicted_claims_and_keeps_the_reply():
    bank = KnowledgeBank()
    bank.for_user("alice").tell("fact: bob.age = 30")
    hook = KnowledgeHook(bank)
    t = turn("How old is Bob?")
    out = await hook.review(t, reply("Bob's age is 31."), never)
    assert out.text == "Bob's age is 31."
    assert [(c.claim, c.verdict) for c in t.claims] == [("bob.age = 31", "CONTRADICTED")]
    assert t.claims[0].support and "bob.age = 30" in t.claims[0].support[0]


async def test_session_scope_stays_in_its_session_and_users_are_isolated():
    hook = KnowledgeHook(KnowledgeBank())
    await hook.prepare(turn("fact: mood.now = calm [scope=session]", session="s1"))
    other_session = turn("What is the mood now?", session="s2")
    await hook.prepare(other_session)
    assert other_session.blocks == []
    same_session = turn("What is the mood now?", session="s1")
    await hook.prepare(same_session)
    assert same_session.blocks
    mallory = turn("What is the mood now?", "s1", "mallory")
    await hook.prepare(mallory)
    assert mallory.blocks == []


def test_fact_lines_read_as_plain_sentences():
    # Raw ``fact:`` lines under a "knowledge base" title made the 135M model answer
    # remarks with a quiz template (BENCHMARKS.md, bench/chat_repeats.py).
    assert fact_sentence("fact: pepper.species = beagle") == "Pepper's species is beagle."
    assert fact_sentence("deny: bob.city = rome") == "Bob's city is not rome."
    assert fact_sentence("fact: bob.quiet = true") == "Bob is quiet."
    assert fact_sentence("fact: bob.quiet = false") == "Bob is not quiet."
    assert fact_sentence("deny: bob.quiet = true") == "Bob is not quiet."
    assert fact_sentence("deny: bob.quiet = false") == "Bob is quiet."
    assert fact_sentence('fact: bob.home_town = "New York"') == 'Bob\'s home town is "New York".'
    assert fact_sentence("not a statement") == "not a statement"
