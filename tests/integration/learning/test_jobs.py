"""JobStore against a real (embedded) redis-server."""

from __future__ import annotations

import threading
import time

import pytest

from dmha.errors import FailedPrecondition, InvalidArgument, NotFound, RedisUnavailable, ResourceExhausted
from dmha.learning import FeedbackItem, JobStore
from dmha.redis_connection import RedisConnection

pytestmark = pytest.mark.integration

ITEM = FeedbackItem("f1", "What is the capital of Zubrowka?", "Vlorn.")


@pytest.fixture
def conn(shared_redis) -> RedisConnection:
    return shared_redis  # one redis-server, then a Redis Cluster


@pytest.fixture
def store(conn) -> JobStore:
    return JobStore(conn, max_queued=3)


def test_happy_path_state_machine(store) -> None:
    job = store.submit([ITEM], "alice")
    assert job.state == "queued"
    claimed = store.claim(0.5)
    assert claimed is not None and claimed.job_id == job.job_id
    assert store.claim(0.1) is None
    store.transition(job.job_id, "training", steps=3, plan={"steps": 3})
    for i in (1, 2, 3):
        store.progress(job.job_id, i, 3, 1.0 / i)
    mid = store.get(job.job_id)
    assert (mid.state, mid.step, mid.steps, mid.loss) == ("training", 3, 3, pytest.approx(1 / 3))
    store.transition(job.job_id, "evaluating")
    store.transition(job.job_id, "freezing", metrics={"efficacy": 1.0})
    done = store.transition(job.job_id, "deployed", version="v1")
    assert done.state == "deployed" and done.version == "v1" and done.metrics == {"efficacy": 1.0}
    assert done.items == (ITEM,) and done.submitter == "alice" and done.plan == {"steps": 3}
    events = list(store.watch(job.job_id, timeout=5))
    states = [e.state for e in events]
    assert states == ["queued", "training", "training", "training", "training", "evaluating", "freezing", "deployed"]
    assert [e.step for e in events if e.state == "training"] == [0, 1, 2, 3]
    assert events[-1].terminal and events[-1].version == "v1"
    assert [j.job_id for j in store.list()] == [job.job_id]


def test_illegal_transitions_and_unknown_jobs(store) -> None:
    job = store.submit([ITEM], "alice")
    with pytest.raises(FailedPrecondition):
        store.transition(job.job_id, "deployed")
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        list(store.watch("nope"))
    with pytest.raises(InvalidArgument):
        store.submit([], "alice")


def test_rejected_and_failed_are_terminal(store) -> None:
    a = store.submit([ITEM], "alice")
    store.claim(0.5)
    store.transition(a.job_id, "training")
    store.transition(a.job_id, "evaluating")
    rejected = store.transition(a.job_id, "rejected", reasons=["locality 0.5 < 0.97"], metrics={"locality": 0.5})
    assert rejected.reasons == ("locality 0.5 < 0.97",)
    with pytest.raises(FailedPrecondition):
        store.transition(a.job_id, "training")


def test_candidates_are_never_queued_until_promoted(store) -> None:
    cand = store.submit([ITEM], "bob", candidate=True)
    assert cand.state == "candidate"
    assert store.claim(0.1) is None
    assert [c.job_id for c in store.list_candidates()] == [cand.job_id]
    promoted = store.promote_candidate(cand.job_id)
    assert promoted.state == "queued" and store.list_candidates() == []
    with pytest.raises(FailedPrecondition):
        store.promote_candidate(cand.job_id)
    assert store.claim(0.5).job_id == cand.job_id
    other = store.submit([ITEM], "bob", candidate=True)
    dismissed = store.dismiss_candidate(other.job_id)
    assert dismissed.state == "failed" and store.list_candidates() == []


def test_queue_limit(store) -> None:
    for _ in range(3):
        store.submit([ITEM], "alice")
    with pytest.raises(ResourceExhausted):
        store.submit([ITEM], "alice")
    store.submit([ITEM], "alice", candidate=True)  # candidates do not occupy the queue


def test_restart_recovery(conn) -> None:
    store = JobStore(conn)
    running = store.submit([ITEM], "alice")
    store.claim(0.5)
    store.transition(running.job_id, "training")
    store.progress(running.job_id, 2, 5, 0.3)
    taken = store.submit([ITEM], "alice")
    store.claim(0.5)  # claimed, then the process died before starting it
    waiting = store.submit([ITEM], "alice")

    fresh = JobStore(conn)  # a new process
    requeued, failed = fresh.recover()
    assert requeued == [taken.job_id] and failed == [running.job_id]
    lost = fresh.get(running.job_id)
    assert lost.state == "failed" and "restarted" in lost.error
    # The interrupted-but-unstarted job is next again, then the one that was waiting.
    assert fresh.claim(0.5).job_id == taken.job_id
    assert fresh.claim(0.5).job_id == waiting.job_id
    assert fresh.recover() == ([taken.job_id, waiting.job_id], [])
    assert [fresh.claim(0.5).job_id for _ in range(2)] == [taken.job_id, waiting.job_id]


def test_watch_blocks_until_the_terminal_event(store) -> None:
    job = store.submit([ITEM], "alice")
    seen: list[str] = []

    def consume() -> None:
        for event in store.watch(job.job_id, timeout=20, block_ms=200):
            seen.append(event.state)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    store.claim(0.5)
    store.transition(job.job_id, "training", steps=1)
    store.progress(job.job_id, 1, 1, 0.1)
    store.transition(job.job_id, "failed", error="boom")
    thread.join(10)
    assert not thread.is_alive()
    assert seen == ["queued", "training", "training", "failed"]


def test_watch_times_out_without_events(store) -> None:
    job = store.submit([ITEM], "alice")
    started = time.monotonic()
    events = list(store.watch(job.job_id, timeout=0.5, block_ms=100))
    assert [e.state for e in events] == ["queued"]
    assert time.monotonic() - started < 5


def test_a_redis_outage_skips_progress_and_a_failure_is_settled_when_it_is_back(store, monkeypatch) -> None:
    job = store.submit([ITEM], "alice")
    assert store.claim(0.5) is not None
    store.transition(job.job_id, "training", steps=3)
    real = store._conn.call
    down = {"calls": 0}

    def outage(fn, what):  # the first calls find Redis down, as during a stall
        down["calls"] += 1
        if down["calls"] <= 3:
            raise RedisUnavailable(f"{what} (Redis) is unavailable; retry shortly")
        return real(fn, what)

    monkeypatch.setattr(store._conn, "call", outage)
    store.progress(job.job_id, 1, 3, 0.5)  # a missed event, not an error
    assert store.settle(job.job_id, "failed", 0.0, error="x") is None  # gave up at once
    done = store.settle(job.job_id, "failed", 30.0, error="internal error")
    assert done is not None and done.state == "failed" and done.error == "internal error"
    assert job.job_id not in [j.job_id for j in store.list() if j.state == "training"]
