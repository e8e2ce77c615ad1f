"""Conflicts: minimal cores, the resolution policy, and the KB staying consistent."""

from __future__ import annotations

import pytest

from dmha.config import KnowledgeConfig
from dmha.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted
from dmha.knowledge import Fact, KnowledgeBase, Scope, Status, Verdict
from dmha.knowledge.reasoner import Reasoner

QUIET_COLD = """rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true
fact: bob.quiet = true
fact: bob.cold = true
fact: bob.tall = true
fact: amy.quiet = true"""


def texts(records: object) -> set[str]:
    return {r.statement.text(options=False) for r in records}  # type: ignore[attr-defined]


def test_rejected_statement_reports_its_minimal_core() -> None:
    kb = KnowledgeBase()
    kb.tell(QUIET_COLD)
    result = kb.tell("deny: bob.smart = true [confidence=0.4]")
    assert not result.accepted and not result.demoted
    (conflict,) = result.rejected
    assert conflict.record.status is Status.REJECTED
    # bob.tall and amy.quiet are in the KB but not in the core.
    assert texts(conflict.core) == {
        "rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true",
        "fact: bob.quiet = true",
        "fact: bob.cold = true",
    }
    assert "lower confidence (0.4 < 1)" in conflict.reason
    assert "bob.smart = true" in conflict.reason
    assert kb.ask("bob.smart = true").verdict is Verdict.ENTAILED


def test_core_is_one_minimal_alternative() -> None:
    kb = KnowledgeBase()
    kb.tell("fact: z.a = 1\nfact: z.b = 1\nrule: if ?x.a = 1 then ?x.c = 1\nrule: if ?x.b = 1 then ?x.c = 1")
    (conflict,) = kb.tell("deny: z.c = 1 [confidence=0.1]").rejected
    # Either derivation alone is a minimal core; both together would not be minimal.
    assert texts(conflict.core) in (
        {"fact: z.a = 1", "rule: if ?x.a = 1 then ?x.c = 1"},
        {"fact: z.b = 1", "rule: if ?x.b = 1 then ?x.c = 1"},
    )


POLICY = [
    # (old, new, winner)
    ("fact: a.age = 30 [confidence=0.9]", "fact: a.age = 31 [confidence=0.5]", "old"),
    ("fact: a.age = 30 [confidence=0.5]", "fact: a.age = 31 [confidence=0.9]", "new"),
    ("fact: a.age = 30", "fact: a.age = 31", "new"),  # same confidence: newer wins
    ("fact: a.ok = true [confidence=0.8]", "deny: a.ok = true [confidence=0.8]", "new"),
    ("deny: a.ok = true", "fact: a.ok = true [confidence=0.99]", "old"),
]


@pytest.mark.parametrize(("old", "new", "winner"), POLICY)
def test_policy(old: str, new: str, winner: str) -> None:
    kb = KnowledgeBase()
    (old_rec,) = kb.tell(old).accepted
    result = kb.tell(new)
    if winner == "old":
        assert not result.accepted and len(result.rejected) == 1
        assert result.rejected[0].core[0].id == old_rec.id
        survivor = old_rec.statement
    else:
        assert len(result.accepted) == 1 and len(result.demoted) == 1
        demoted = result.demoted[0]
        assert demoted.record.id == old_rec.id
        assert demoted.record.status is Status.REJECTED
        assert [r.id for r in demoted.core] == [result.accepted[0].id]
        survivor = result.accepted[0].statement
    assert isinstance(survivor, Fact)
    assert kb.ask(survivor.literal).verdict is Verdict.ENTAILED
    assert {r.id for r in kb.statements(status="accepted")} == {
        old_rec.id if winner == "old" else result.accepted[0].id
    }


@pytest.mark.parametrize(
    ("old_scope", "new_scope", "winner"),
    [
        (Scope.USER, Scope.SESSION, "new"),
        (Scope.SESSION, Scope.USER, "old"),
        (Scope.GLOBAL, Scope.USER, "new"),
        (Scope.USER, Scope.GLOBAL, "old"),
    ],
)
def test_policy_scope_breaks_ties_of_confidence_and_time(old_scope: Scope, new_scope: Scope, winner: str) -> None:
    # Equal created_at cannot come out of tell(), so this drives the reasoner directly.
    reasoner = Reasoner(solver_timeout_ms=2000)
    assert reasoner.add("old", Fact("a", "b", "1", scope=old_scope, created_at=5.0)).accepted
    admission = reasoner.add("new", Fact("a", "b", "2", scope=new_scope, created_at=5.0))
    if winner == "new":
        assert admission.accepted and [d.sid for d in admission.demoted] == ["old"]
        assert "broader scope" in admission.demoted[0].reason
    else:
        assert not admission.accepted and admission.loss is not None
        assert admission.loss.core == frozenset({"old", "new"})


def test_new_winner_demotes_weakest_member_only() -> None:
    kb = KnowledgeBase()
    kb.tell("rule: if ?x.quiet = true then ?x.smart = true [confidence=0.9]\nfact: bob.quiet = true [confidence=0.6]")
    result = kb.tell("deny: bob.smart = true [confidence=0.8]")
    assert len(result.accepted) == 1
    assert texts(d.record for d in result.demoted) == {"fact: bob.quiet = true"}
    assert kb.ask("bob.quiet = true").verdict is Verdict.UNKNOWN
    assert kb.ask("bob.smart = true").verdict is Verdict.CONTRADICTED
    # The rule survives and still fires for others.
    kb.tell("fact: amy.quiet = true")
    assert kb.ask("amy.smart = true").verdict is Verdict.ENTAILED


def test_several_cores_demote_one_loser_each() -> None:
    kb = KnowledgeBase()
    kb.tell("fact: a.p = 1\nrule: if ?x.q = 1 then ?x.p = 1\nfact: a.q = 1")
    result = kb.tell("fact: a.p = 2")
    assert len(result.accepted) == 1
    assert texts(d.record for d in result.demoted) == {"fact: a.p = 1", "rule: if ?x.q = 1 then ?x.p = 1"}
    assert kb.ask("a.p = 2").verdict is Verdict.ENTAILED
    assert kb.ask("a.q = 1").verdict is Verdict.ENTAILED


def test_rejection_rolls_back_demotions_of_the_same_statement() -> None:
    kb = KnowledgeBase()
    # The new fact would beat the weak a.p = 1 but loses to the strong derivation.
    kb.tell("fact: a.p = 1 [confidence=0.2]\nrule: if ?x.q = 1 then ?x.p = 1\nfact: a.q = 1")
    result = kb.tell("fact: a.p = 2 [confidence=0.5]")
    assert not result.accepted and not result.demoted and len(result.rejected) == 1
    assert len(kb.statements(status="accepted")) == 3


def test_conflict_inside_one_tell_newer_line_wins() -> None:
    kb = KnowledgeBase()
    result = kb.tell("fact: a.age = 1\nfact: a.age = 2")
    assert texts(result.accepted) == {"fact: a.age = 2"}
    assert texts(d.record for d in result.demoted) == {"fact: a.age = 1"}


def test_conflicts_and_explain_of_rejected() -> None:
    kb = KnowledgeBase()
    (old,) = kb.tell("fact: a.age = 1 [confidence=0.9]").accepted
    (conflict,) = kb.tell("fact: a.age = 2 [confidence=0.1]").rejected
    assert [c.record.id for c in kb.conflicts()] == [conflict.record.id]
    explanation = kb.explain(conflict.record.id)
    assert explanation.record.status is Status.REJECTED
    assert [r.id for r in explanation.core] == [old.id]
    assert "functional" in explanation.reason
    with pytest.raises(NotFound):
        kb.explain("nope")


def test_attr_functional_after_multi_resolves_existing_values() -> None:
    kb = KnowledgeBase()
    kb.tell("attr: likes multi\nfact: bob.likes = cat\nfact: bob.likes = dog")
    assert kb.ask("bob.likes = cat").verdict is Verdict.ENTAILED
    result = kb.tell("attr: likes functional")
    assert len(result.accepted) == 1
    (demoted,) = result.demoted
    assert texts([demoted.record]) == {"fact: bob.likes = cat"}
    assert "attr: likes functional" in texts(demoted.core)


def test_attr_functional_rejected_when_values_are_stronger() -> None:
    kb = KnowledgeBase()
    kb.tell("attr: likes multi\nfact: bob.likes = cat\nfact: bob.likes = dog")
    (conflict,) = kb.tell("attr: likes functional [confidence=0.3]").rejected
    assert len(conflict.core) == 2
    assert kb.ask("bob.likes = cat").verdict is Verdict.ENTAILED


def test_retracting_multi_declaration_restores_consistency() -> None:
    kb = KnowledgeBase()
    decl, _cat, dog = kb.tell("attr: likes multi\nfact: bob.likes = cat\nfact: bob.likes = dog").accepted
    kb.retract(decl.id)
    accepted = texts(kb.statements(status="accepted"))
    assert accepted == {"fact: bob.likes = dog"}  # default functional: the newer value stays
    assert kb.ask("bob.likes = dog").verdict is Verdict.ENTAILED
    assert kb.ask("bob.likes = cat").verdict is Verdict.CONTRADICTED
    del dog


def test_solver_timeout_gives_unknown_never_a_wrong_verdict() -> None:
    n = 400
    text = "fact: x.p0 = true\n" + "\n".join(f"rule: if ?x.p{i} = true then ?x.p{i + 1} = true" for i in range(n))
    slow = KnowledgeBase(KnowledgeConfig(solver_timeout_ms=10))
    slow.tell(text)
    answer = slow.ask(f"x.p{n} = true")
    assert answer.verdict is Verdict.UNKNOWN and answer.reason == "timeout"
    assert not answer.support
    # A conflict that cannot be explained in budget is rejected, keeping consistency.
    (conflict,) = slow.tell(f"deny: x.p{n} = true").rejected
    assert conflict.reason.startswith("timeout")
    roomy = KnowledgeBase(KnowledgeConfig(solver_timeout_ms=60_000))
    roomy.tell(text)
    assert roomy.ask(f"x.p{n} = true").verdict is Verdict.ENTAILED


def test_retract_needing_resolution_beyond_budget_changes_nothing() -> None:
    n = 400
    kb = KnowledgeBase(KnowledgeConfig(solver_timeout_ms=10))
    kb.tell(
        "attr: p multi\nfact: x.q0 = true\n"
        + "\n".join(f"rule: if ?x.q{i} = true then ?x.q{i + 1} = true" for i in range(n))
        + f"\nrule: if ?x.q{n} = true then ?x.p = 1\nfact: x.p = 2"
    )
    decl = kb.statements()[0]
    with pytest.raises(DeadlineExceeded):
        kb.retract(decl.id)
    assert decl.id in {r.id for r in kb.statements(status="accepted")}


def test_capacity_limit() -> None:
    kb = KnowledgeBase(KnowledgeConfig(max_statements_per_user=3))
    kb.tell("fact: a.b = 1\nfact: a.c = 1")
    with pytest.raises(ResourceExhausted):
        kb.tell("fact: a.d = 1\nfact: a.e = 1")
    assert len(kb.statements()) == 2  # nothing of the refused tell was added
    kb.tell("fact: a.d = 1")


def test_text_size_limit_and_bad_arguments() -> None:
    kb = KnowledgeBase(KnowledgeConfig(max_statement_bytes=32))
    with pytest.raises(InvalidArgument) as info:
        kb.tell("fact: a.b = 1\n" * 3)
    assert "limit 32" in str(info.value)
    with pytest.raises(InvalidArgument):
        kb.tell("fact: a.b = 1", scope="planet")
    with pytest.raises(InvalidArgument):
        kb.tell("fact: a.b = 1", scope="session")  # no session on this KB
    with pytest.raises(InvalidArgument):
        kb.statements(status="maybe")


def test_tell_defaults_scope_and_source() -> None:
    kb = KnowledgeBase(session_id="s1")
    (a, b) = kb.tell("fact: a.b = 1\nfact: a.c = 1 [scope=user, source=wiki]", scope="session", source="chat").accepted
    assert (a.scope, a.statement.source) == (Scope.SESSION, "chat")
    assert (b.scope, b.statement.source) == (Scope.USER, "wiki")
    assert a.statement.created_at < b.statement.created_at
