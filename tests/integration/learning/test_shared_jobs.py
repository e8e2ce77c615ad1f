"""Several workers on one Redis: exclusive claims, leases, reclaiming, the shared live
pointer and the shared rate limit (real redis-server, no model)."""

from __future__ import annotations

import time

import pytest

from dmha.auth.ratelimit import RedisRateLimiter
from dmha.errors import LearningError, ResourceExhausted
from dmha.learning.feedback import FeedbackItem
from dmha.learning.jobs import JobStore
from dmha.learning.lease import WorkerLease, new_owner_id
from dmha.learning.live import GuardedDeploy, LiveFollower, LivePointer, ModelHolder
from dmha.llm.base import ModelHandle
from dmha.redis_connection import RedisConnection

pytestmark = pytest.mark.integration

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "The capital is Vlorn.")


@pytest.fixture
def conn(shared_redis) -> RedisConnection:
    return shared_redis  # one redis-server, then a Redis Cluster


def _handle(version: str) -> ModelHandle:
    return ModelHandle(version, None, None, 512, frozenset({2}))  # type: ignore[arg-type]


def test_each_job_is_claimed_by_exactly_one_worker(conn) -> None:
    submit = JobStore(conn)
    ids = [submit.submit([ITEM], "alice").job_id for _ in range(6)]
    workers = [JobStore(conn, owner=new_owner_id(), lease_seconds=30) for _ in range(3)]
    taken: dict[str, str] = {}
    for _ in range(3):
        for w in workers:
            job = w.claim(timeout=0.1)
            if job is not None:
                assert job.job_id not in taken
                taken[job.job_id] = w.owner
    assert sorted(taken) == sorted(ids)
    assert all(submit.get(j).owner == owner for j, owner in taken.items())
    assert submit.claim(timeout=0.1) is None


def test_a_stopped_workers_jobs_are_reclaimed_once(conn) -> None:
    dead = JobStore(conn, owner="dead-1", lease_seconds=0.3)
    alive = JobStore(conn, owner="alive-1", lease_seconds=30)
    replica = JobStore(conn)
    first = replica.submit([ITEM], "alice").job_id
    second = replica.submit([ITEM], "alice").job_id
    running = dead.claim(timeout=0.1)
    waiting = dead.claim(timeout=0.1)
    assert running is not None and waiting is not None and running.job_id == first
    dead.transition(first, "training", step=1, steps=5)
    own = alive.submit([ITEM], "bob").job_id
    assert alive.claim(timeout=0.1).job_id == own  # type: ignore[union-attr]
    alive.transition(own, "training")
    # Leases live: nothing is touched, however often anyone reclaims.
    assert replica.reclaim() == ([], [])
    time.sleep(0.5)  # the dead worker's lease expires; the live one's does not
    requeued, failed = replica.reclaim()
    assert (requeued, failed) == ([second], [first])
    assert alive.reclaim() == ([], [])  # already settled: exactly one process settles each job
    assert "stopped renewing its claim" in replica.get(first).error
    assert replica.get(own).state == "training"
    # The requeued job goes to the next worker that asks; the dead owner is forgotten.
    assert alive.claim(timeout=0.1).job_id == second  # type: ignore[union-attr]
    assert "dead-1" not in conn.client.smembers(f"{conn.tag('dmha:learn')}:workers")


def test_a_lease_thread_keeps_a_long_job_claimed(conn) -> None:
    worker = JobStore(conn, owner=new_owner_id(), lease_seconds=0.6)
    lease = WorkerLease(worker)
    lease.start()
    try:
        job_id = JobStore(conn).submit([ITEM], "alice").job_id
        assert worker.claim(timeout=0.1) is not None
        worker.transition(job_id, "training")
        time.sleep(1.5)  # longer than the lease: only renewals keep it
        assert JobStore(conn).reclaim() == ([], [])
    finally:
        lease.stop()
    assert JobStore(conn).reclaim() == ([], [job_id])  # a stopped lease is given up


def test_a_deploy_from_a_stale_version_does_not_move_the_pointer(conn) -> None:
    pointer = LivePointer(conn)
    assert pointer.seed("base") == "base" and pointer.seed("v9") == "base"
    first, second = ModelHolder(_handle("base")), ModelHolder(_handle("base"))
    GuardedDeploy(first, pointer).swap(_handle("v1"))
    assert pointer.get() == "v1" and first.handle.version == "v1"
    with pytest.raises(LearningError, match="changed from base to v1"):
        GuardedDeploy(second, pointer).swap(_handle("v2"))
    assert pointer.get() == "v1" and second.handle.version == "base"


def test_the_follower_swaps_on_announcements_and_by_polling(conn) -> None:
    pointer = LivePointer(conn)
    pointer.seed("base")
    holder = ModelHolder(_handle("base"))
    loaded: list[str] = []

    def load(version: str) -> ModelHandle:
        loaded.append(version)
        return _handle(version)

    follower = LiveFollower(pointer, load, holder, poll_seconds=30)
    follower.start()
    try:
        time.sleep(0.3)  # subscribed
        pointer.set("v1")  # announced: followed long before the 30 s poll
        deadline = time.monotonic() + 5
        while holder.handle.version != "v1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.handle.version == "v1"
    finally:
        follower.stop()
    # A move nobody announced (a lost message) is found by the periodic check.
    conn.client.set(pointer.key, "v2")
    polling = LiveFollower(pointer, load, holder, poll_seconds=0.2)
    polling.start()
    try:
        deadline = time.monotonic() + 5
        while holder.handle.version != "v2" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        polling.stop()
    assert holder.handle.version == "v2" and loaded == ["v1", "v2"]


def test_the_rate_limit_is_one_bucket_across_limiters(conn) -> None:
    a, b = RedisRateLimiter(conn, 4, "user"), RedisRateLimiter(conn, 4, "user")
    for lim in (a, b, a, b):
        lim.check("alice")
    with pytest.raises(ResourceExhausted, match="retry in"):
        a.check("alice")
    with pytest.raises(ResourceExhausted):
        b.check("alice")
    b.check("bob")  # buckets are per key
    RedisRateLimiter(conn, 0, "user").check("alice")  # 0 = no limit
