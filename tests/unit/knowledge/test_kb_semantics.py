"""Reasoning semantics of DESIGN.md: directed Horn rules over literals, explicit
negation, no contraposition, no negation as failure, functional vs multi, open world."""

from __future__ import annotations

import pytest

from dmha.errors import InvalidArgument
from dmha.knowledge import KnowledgeBase, Literal, Verdict

E, C, U = Verdict.ENTAILED, Verdict.CONTRADICTED, Verdict.UNKNOWN

QUIET_COLD = """
rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true
fact: bob.quiet = true
fact: bob.cold = true
"""
FAMILY = """
attr: parent multi
fact: a.parent = b
fact: a.parent = c
fact: b.parent = d
rule: if ?x.parent = ?y and ?y.parent = ?z then ?x.grandparent = ?z
"""
CHAIN = "fact: x.p0 = true\n" + "\n".join(f"rule: if ?x.p{i} = true then ?x.p{i + 1} = true" for i in range(6))

SEMANTICS = [
    # (id, statements, query, verdict)
    ("design-example", QUIET_COLD, "bob.smart = true", E),
    ("design-example-negated-query", QUIET_COLD, "not bob.smart = true", C),
    ("body-incomplete", QUIET_COLD + "fact: amy.quiet = true", "amy.smart = true", U),
    ("open-world", QUIET_COLD, "carl.smart = true", U),
    ("no-contraposition", "rule: if ?x.p = true then ?x.q = true\ndeny: a.q = true", "a.p = true", U),
    ("no-contraposition-neg", "rule: if ?x.p = true then ?x.q = true\ndeny: a.q = true", "not a.p = true", U),
    ("no-negation-as-failure", "rule: if not ?x.a = true then ?x.b = true\nfact: z.c = 1", "z.b = true", U),
    ("negation-in-body", "rule: if not ?x.a = true then ?x.b = 1\ndeny: z.a = true", "z.b = 1", E),
    ("negation-in-head", "rule: if ?x.a = 1 then not ?x.b = 2\nfact: z.a = 1", "z.b = 2", C),
    ("negation-in-head-entailed", "rule: if ?x.a = 1 then not ?x.b = 2\nfact: z.a = 1", "not z.b = 2", E),
    ("functional-other-value", "fact: alice.age = 30", "alice.age = 31", C),
    ("functional-same-value", "fact: alice.age = 30", "alice.age = 30", E),
    # Functional exclusion makes a value CONTRADICTED, but `not alice.age = 31` is a
    # literal of its own, derivable only from statements (the Horn definition).
    ("functional-negative-literal", "fact: alice.age = 30", "not alice.age = 31", U),
    ("multi-values-coexist", "attr: likes multi\nfact: bob.likes = cat\nfact: bob.likes = dog", "bob.likes = cat", E),
    ("multi-other-value-unknown", "attr: likes multi\nfact: bob.likes = cat", "bob.likes = dog", U),
    ("boolean-false-is-not-true", "fact: x.a = false", "not x.a = true", E),
    ("boolean-false-contradicts-true", "fact: x.a = false", "x.a = true", C),
    ("boolean-deny-false", "deny: x.a = false", "x.a = true", E),
    ("boolean-vs-functional-value", "fact: x.a = 5", "x.a = false", C),
    ("variable-binds-false", "rule: if ?x.a = ?v then ?x.copy = ?v\nfact: z.a = false", "not z.copy = true", E),
    ("grandparent", FAMILY, "a.grandparent = d", E),
    ("grandparent-other-branch", FAMILY, "c.grandparent = d", U),
    ("multi-parent", FAMILY, "a.parent = c", E),
    ("chain-depth-6", CHAIN, "x.p6 = true", E),
    ("chain-other-entity", CHAIN, "y.p6 = true", U),
    (
        "value-join",
        "attr: same_age multi\nfact: a.age = 3\nfact: b.age = 3\nfact: c.age = 4\n"
        "rule: if ?x.age = ?n and ?y.age = ?n then ?x.same_age = ?y",
        "a.same_age = b",
        E,
    ),
    (
        "value-join-no-match",
        "attr: same_age multi\nfact: a.age = 3\nfact: c.age = 4\n"
        "rule: if ?x.age = ?n and ?y.age = ?n then ?x.same_age = ?y",
        "a.same_age = c",
        U,
    ),
    (
        "ground-rule",
        "rule: if alice.happy = true then bob.happy = true\nfact: alice.happy = true",
        "bob.happy = true",
        E,
    ),
    ("case-insensitive", "fact: Bob.Age = 30", "BOB.age = 30", E),
    ("number-canonical", "fact: x.n = 3.0", "x.n = 3", E),
    ("string-is-not-identifier", 'fact: x.name = "bob"', "x.name = bob", C),
    ("numbers-not-entities", "rule: if ?x.a = ?v then ?v.b = 1\nfact: z.a = 7", "z.b = 1", U),
    (
        "cycle-needs-a-base",
        "rule: if ?x.p = true then ?x.q = true\nrule: if ?x.q = true then ?x.p = true\nfact: z.r = 1",
        "z.p = true",
        U,
    ),
]


@pytest.mark.parametrize(("statements", "query", "verdict"), [c[1:] for c in SEMANTICS], ids=[c[0] for c in SEMANTICS])
def test_semantics(statements: str, query: str, verdict: Verdict) -> None:
    kb = KnowledgeBase()
    result = kb.tell(statements)
    assert not result.rejected and not result.demoted
    answer = kb.ask(query)
    assert answer.verdict is verdict, answer.reason
    assert bool(answer.support) == (verdict is not U)


def test_support_is_the_derivation() -> None:
    kb = KnowledgeBase()
    kb.tell(CHAIN + "\nfact: x.unrelated = 1\nrule: if ?x.unrelated = 1 then ?x.other = 2")
    answer = kb.ask("x.p6 = true")
    assert len(answer.support) == 7  # the fact and the six rules, nothing else
    assert {r.statement.text(options=False) for r in answer.support} == {s.strip() for s in CHAIN.splitlines()}


def test_support_is_minimal_with_alternative_derivations() -> None:
    kb = KnowledgeBase()
    kb.tell(
        "fact: z.a = 1\nfact: z.b = 1\nrule: if ?x.a = 1 then ?x.c = 1\nrule: if ?x.b = 1 and ?x.a = 1 then ?x.c = 1"
    )
    support = kb.ask("z.c = 1").support
    assert [r.statement.text(options=False) for r in support] == ["fact: z.a = 1", "rule: if ?x.a = 1 then ?x.c = 1"]


def test_ask_accepts_a_literal_and_rejects_variables() -> None:
    kb = KnowledgeBase()
    kb.tell("fact: bob.age = 30")
    assert kb.ask(Literal.of("Bob", "age", 30)).verdict is E
    with pytest.raises(InvalidArgument):
        kb.ask(Literal("?x", "age", "30"))


@pytest.mark.parametrize("order", ["rule-first", "facts-first"])
def test_rule_and_fact_order_do_not_matter(order: str) -> None:
    rule = "rule: if ?x.parent = ?y and ?y.parent = ?z then ?x.grandparent = ?z"
    facts = "attr: parent multi\nfact: a.parent = b\nfact: b.parent = c"
    kb = KnowledgeBase()
    for text in [rule, facts] if order == "rule-first" else [facts, rule]:
        kb.tell(text)
    assert kb.ask("a.grandparent = c").verdict is E


def test_retracting_a_fact_removes_what_it_derived() -> None:
    kb = KnowledgeBase()
    ids = [r.id for r in kb.tell(CHAIN).accepted]
    kb.retract(ids[0])
    assert kb.ask("x.p6 = true").verdict is U
    assert kb.ask("x.p1 = true").verdict is U


def test_retract_keeps_alternative_derivation() -> None:
    kb = KnowledgeBase()
    fact, _rule, _other = kb.tell("fact: z.c = 1\nrule: if ?x.a = 1 then ?x.c = 1\nfact: z.a = 1").accepted
    kb.retract(fact.id)
    answer = kb.ask("z.c = 1")
    assert answer.verdict is E and fact.id not in {r.id for r in answer.support}


def test_retract_cycle_is_not_self_supporting() -> None:
    kb = KnowledgeBase()
    accepted = kb.tell(
        "rule: if ?x.p = true then ?x.q = true\nrule: if ?x.q = true then ?x.p = true\nfact: z.p = true"
    ).accepted
    assert kb.ask("z.q = true").verdict is E
    kb.retract(accepted[2].id)
    assert kb.ask("z.q = true").verdict is U
    assert kb.ask("z.p = true").verdict is U


def test_retract_rule() -> None:
    kb = KnowledgeBase()
    rule = kb.tell(QUIET_COLD).accepted[0]
    kb.retract(rule.id)
    assert kb.ask("bob.smart = true").verdict is U
    assert kb.ask("bob.quiet = true").verdict is E


def test_explain_accepted_statement_lists_consequences() -> None:
    kb = KnowledgeBase()
    rule, quiet, _cold = kb.tell(QUIET_COLD).accepted
    assert [str(x) for x in kb.explain(rule.id).consequences] == ["bob.smart = true"]
    assert [str(x) for x in kb.explain(quiet.id).consequences] == ["bob.smart = true"]


def test_vocabulary_helpers() -> None:
    kb = KnowledgeBase()
    kb.tell(QUIET_COLD + "fact: bob.job = doctor\nattr: likes multi")
    assert {"quiet", "cold", "smart", "job", "likes"} <= kb.attributes()
    assert kb.knows_entity("Bob") and not kb.knows_entity("carl")
    assert kb.attributes_having("doctor") == ["job"]
    assert "bob.smart = true" in [str(x) for x in kb.literals_about("bob")]
