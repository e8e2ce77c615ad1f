"""Scopes, roles, per-user isolation and reloading, over the in-memory store."""

from __future__ import annotations

import pytest

from dmha.errors import InvalidArgument, NotFound, PermissionDenied, RedisUnavailable
from dmha.knowledge import InMemoryStore, KnowledgeBank, KnowledgeBase, Status, Verdict

E, C, U = Verdict.ENTAILED, Verdict.CONTRADICTED, Verdict.UNKNOWN


@pytest.fixture
def bank() -> KnowledgeBank:
    return KnowledgeBank(InMemoryStore())


def test_users_are_isolated(bank: KnowledgeBank) -> None:
    alice = bank.for_user("alice")
    bob = bank.for_user("bob")
    (rec,) = alice.tell("fact: cat.color = black").accepted
    assert alice.ask("cat.color = black").verdict is E
    assert bob.ask("cat.color = black").verdict is U
    assert bob.statements() == []
    for call in (bob.retract, bob.explain):
        with pytest.raises(NotFound):
            call(rec.id)
    # Contradicting facts of different users never conflict.
    assert not bob.tell("fact: cat.color = white").demoted
    assert alice.ask("cat.color = black").verdict is E


def test_global_statements_are_visible_to_all_and_admin_only(bank: KnowledgeBank) -> None:
    admin = bank.for_user("root", role="admin")
    with pytest.raises(PermissionDenied):
        bank.for_user("alice").tell("fact: earth.shape = round", scope="global")
    with pytest.raises(PermissionDenied):
        bank.for_user("alice").tell("fact: earth.shape = round [scope=global]")
    (rec,) = admin.tell("fact: earth.shape = round", scope="global").accepted
    for user in ("alice", "bob"):
        assert bank.for_user(user).ask("earth.shape = round").verdict is E
    with pytest.raises(PermissionDenied):
        bank.for_user("alice").retract(rec.id)
    admin.retract(rec.id)
    assert bank.for_user("alice").ask("earth.shape = round").verdict is U


def test_user_override_of_global_is_local(bank: KnowledgeBank) -> None:
    admin = bank.for_user("root", role="admin")
    (glob,) = admin.tell("fact: sky.color = blue [scope=global]").accepted
    alice = bank.for_user("alice")
    result = alice.tell("fact: sky.color = grey")
    assert [d.record.id for d in result.demoted] == [glob.id]
    assert alice.ask("sky.color = blue").verdict is C
    shown = {r.id: r.status for r in alice.statements()}
    assert shown[glob.id] is Status.REJECTED
    # Other users and the global statement itself are untouched.
    assert bank.for_user("bob").ask("sky.color = blue").verdict is E
    assert {r.id: r.status for r in bank.for_user("bob").statements()} == {glob.id: Status.ACCEPTED}


def test_weak_user_statement_loses_to_global(bank: KnowledgeBank) -> None:
    bank.for_user("root", role="admin").tell("fact: sky.color = blue [scope=global]")
    alice = bank.for_user("alice")
    (conflict,) = alice.tell("fact: sky.color = grey [confidence=0.3]").rejected
    assert conflict.record.status is Status.REJECTED
    assert alice.ask("sky.color = blue").verdict is E


def test_new_global_statement_reconciles_existing_user_views(bank: KnowledgeBank) -> None:
    alice = bank.for_user("alice")
    alice.tell("fact: sky.color = grey [confidence=0.5]")
    assert alice.ask("sky.color = grey").verdict is E
    bank.for_user("root", role="admin").tell("fact: sky.color = blue [scope=global]")
    # The cached view notices the global change and applies the policy (newer and
    # more confident global wins).
    assert alice.ask("sky.color = blue").verdict is E
    assert [c.record.statement.value for c in alice.conflicts()] == ["grey"]


def test_session_scope(bank: KnowledgeBank) -> None:
    s1 = bank.for_user("alice", "s1")
    s1.tell("fact: mood.now = happy", scope="session")
    s1.tell("fact: alice.city = paris")  # user scope: all sessions
    s2 = bank.for_user("alice", "s2")
    user_view = bank.for_user("alice")
    assert s1.ask("mood.now = happy").verdict is E
    assert s2.ask("mood.now = happy").verdict is U
    assert user_view.ask("mood.now = happy").verdict is U
    assert s2.ask("alice.city = paris").verdict is E
    with pytest.raises(InvalidArgument):
        s1.tell("fact: a.b = 1", session_id="s2")


def test_session_statement_overrides_user_statement_only_in_session(bank: KnowledgeBank) -> None:
    user_view = bank.for_user("alice")
    (fact,) = user_view.tell("fact: alice.city = paris").accepted
    s1 = bank.for_user("alice", "s1")
    s1.tell("fact: alice.city = rome [scope=session]")
    assert s1.ask("alice.city = rome").verdict is E
    assert user_view.ask("alice.city = paris").verdict is E
    assert bank.for_user("alice", "s2").ask("alice.city = paris").verdict is E
    assert {r.id: r.status for r in s1.statements()}[fact.id] is Status.REJECTED


def test_reload_from_store_reproduces_state() -> None:
    store = InMemoryStore()
    first = KnowledgeBase(store=store)
    first.tell("rule: if ?x.quiet = true then ?x.smart = true\nfact: bob.quiet = true\nfact: a.age = 1")
    first.tell("fact: a.age = 2")
    (rejected,) = first.tell("fact: a.age = 3 [confidence=0.1]").rejected
    again = KnowledgeBase(store=store)  # a "restart": nothing but the store is shared
    assert again.ask("bob.smart = true").verdict is E
    assert again.ask("a.age = 2").verdict is E
    assert [(r.id, r.status) for r in again.statements()] == [(r.id, r.status) for r in first.statements()]
    assert again.explain(rejected.record.id).reason == rejected.reason


def test_ids_validated(bank: KnowledgeBank) -> None:
    with pytest.raises(InvalidArgument):
        bank.for_user("")
    with pytest.raises(InvalidArgument):
        bank.for_user("a", "x" * 300)


def test_namespaces_do_not_collide(bank: KnowledgeBank) -> None:
    # ("a", session "b:c") and ("a:b", session "c") would share a namespace: ids with
    # ':' are refused (dmha.ids), and distinct valid ids never collide.
    with pytest.raises(InvalidArgument, match="session_id"):
        bank.for_user("a", "b:c")
    with pytest.raises(InvalidArgument, match="user_id"):
        bank.for_user("a:b", "c")
    bank.for_user("a", "b.c").tell("fact: x.y = 1 [scope=session]")
    assert bank.for_user("a.b", "c").ask("x.y = 1").verdict is U


def test_views_evicted_and_reloaded(bank: KnowledgeBank) -> None:
    small = KnowledgeBank(bank.store, max_views=1)
    small.for_user("alice").tell("fact: a.b = 1")
    small.for_user("bob").tell("fact: a.b = 2")
    assert small.for_user("alice").ask("a.b = 1").verdict is E
    small.evict("alice")
    assert small.for_user("alice").ask("a.b = 1").verdict is E


def test_views_of_one_user_follow_each_other_incrementally(bank: KnowledgeBank) -> None:
    user_view = bank.for_user("alice")
    session = bank.for_user("alice", "s1")
    (fact,) = user_view.tell("fact: a.age = 30\nrule: if ?x.age = 30 then ?x.old = true").accepted[:1]
    assert session.ask("a.old = true").verdict is E
    reasoner = session._view.reasoner
    session.tell("fact: a.age = 31")  # user scope: demotes the user view's fact
    assert user_view.ask("a.age = 31").verdict is E
    assert user_view.ask("a.old = true").verdict is U
    assert {r.id: r.status for r in user_view.statements()}[fact.id] is Status.REJECTED
    user_view.retract(fact.id)
    user_view.tell("fact: b.age = 30")
    assert session.ask("b.old = true").verdict is E
    assert fact.id not in {r.id for r in session.statements()}
    assert session._view.reasoner is reasoner


def test_short_change_log_falls_back_to_reload(bank: KnowledgeBank, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dmha.knowledge.store.LOG_LENGTH", 2)
    reader, writer = bank.for_user("alice", "s1"), bank.for_user("alice")
    reader.tell("fact: a.n = 0")
    before = reader._view.reasoner
    for i in range(1, 5):
        writer.tell(f"fact: a.n = {i}")
    assert reader.ask("a.n = 4").verdict is E
    assert reader.ask("a.n = 3").verdict is C
    assert reader._view.reasoner is not before


class _FlakyStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def commit(self, batch):  # type: ignore[no-untyped-def]
        if self.fail_next:
            self.fail_next = False
            raise RedisUnavailable("down")
        return super().commit(batch)


def test_failed_commit_leaves_nothing_behind() -> None:
    store = _FlakyStore()
    kb = KnowledgeBase(store=store)
    kb.tell("fact: a.age = 1")
    store.fail_next = True
    with pytest.raises(RedisUnavailable):
        kb.tell("fact: a.age = 2\nfact: b.x = 1")
    # The view re-reads the store: neither the new facts nor the demotion happened.
    assert kb.ask("a.age = 1").verdict is E
    assert kb.ask("b.x = 1").verdict is U
    assert [r.status for r in kb.statements()] == [Status.ACCEPTED]
