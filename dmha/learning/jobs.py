"""Durable training-job records in Redis, the queue the worker takes them from, and
a per-job event stream.

Keys (all under ``dmha:learn:``, which is ``{dmha:learn}:`` on a Redis Cluster so
that they share one slot):

- ``job:{id}``      hash: the job record (JSON fields for lists and dicts);
- ``jobs``          sorted set id -> created_at (listing);
- ``candidates``    sorted set id -> created_at: feedback awaiting a trainer;
- ``queue``         list of queued ids (LPUSH in, BLMOVE out);
- ``claimed``       list of ids taken by a worker and not yet finished;
- ``events:{id}``   stream of state changes and progress (what ``watch`` reads).

States::

    candidate --promote--> queued --> training --> evaluating --> freezing --> deployed
                                          |             |            |
                                          +--> failed   +--> rejected, failed

A job moves between states with its event in one transaction, so a watcher never
misses a transition. A worker takes a job with BLMOVE into ``claimed``; on start,
:meth:`JobStore.recover` puts claimed-but-unstarted jobs back in the queue and
marks jobs caught in a running state ``failed`` (an update killed half-way is not
retried blindly: it may be what killed the process).

Several workers (``dmha worker``) each give their store an ``owner`` id. A job then
moves atomically (BLMOVE) into that owner's own list, so each job is trained by
exactly one worker, and the owner keeps a lease alive while it runs:

- ``claimed:{owner}``  list of the ids that owner took;
- ``workers``          set of owners that ever claimed;
- ``alive:{owner}``    expiring key renewed by the owner (:meth:`JobStore.renew`).

:meth:`JobStore.reclaim` (run by every replica and worker) settles the jobs of an
owner whose lease expired exactly as ``recover`` settles a restarted process's.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from dmha.errors import FailedPrecondition, InvalidArgument, NotFound, RedisUnavailable, ResourceExhausted
from dmha.ids import check_id, redis_key
from dmha.learning.feedback import FeedbackItem, new_id
from dmha.learning.job_events import RUNNING_STATES, TERMINAL_STATES, JobEvent, JobState, JobWatch
from dmha.redis_connection import RedisConnection

__all__ = ["RUNNING_STATES", "TERMINAL_STATES", "Job", "JobEvent", "JobState", "JobStore", "JobWatch"]

log = logging.getLogger(__name__)

_ALLOWED: dict[str, frozenset[str]] = {
    "candidate": frozenset({"queued", "failed"}),
    "queued": frozenset({"training", "failed"}),
    "training": frozenset({"training", "evaluating", "failed"}),
    # evaluating -> training: the meta-learner retries a rejected candidate (repair mode).
    "evaluating": frozenset({"freezing", "rejected", "failed", "training"}),
    "freezing": frozenset({"deployed", "failed"}),
}
_EVENTS_MAXLEN = 1000
# Take one id out of a stopped worker's list; requeue it if it never started. Returns
# its state, or nil when another process took it first (so one settles each job).
_TAKE_BACK = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return false end
local state = redis.call('HGET', KEYS[3], 'state')
if state == 'queued' then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return state or ''
"""
# Forget a stopped worker once its list is empty.
_FORGET_OWNER = """
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""
_EVENTS_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class Job:
    """A training job (or a candidate awaiting promotion).

    Attributes:
        job_id: identifier.
        state: see the module docstring.
        items: the feedback to learn.
        submitter: who submitted it (a user id).
        created_at: Unix time of submission.
        updated_at: Unix time of the last change.
        step: last completed training step.
        steps: planned training steps (0 until training starts).
        loss: the last step's loss.
        metrics: gate and timing figures once known.
        reasons: why the gate rejected it.
        error: why it failed.
        version: the model version it produced (deployed jobs).
        plan: the UpdatePlan used, as a dict.
    """

    job_id: str
    state: JobState
    items: tuple[FeedbackItem, ...]
    submitter: str
    created_at: float
    updated_at: float
    step: int = 0
    steps: int = 0
    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    error: str = ""
    version: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """Why the job was queued or kept as a candidate (e.g. the meta-learner's decision)."""
    owner: str = ""
    """The worker that claimed it, when several share the queue."""

    @classmethod
    def _from_hash(cls, h: dict[str, str]) -> Job:
        return cls(
            job_id=h["job_id"],
            state=h["state"],  # type: ignore[arg-type]
            items=tuple(FeedbackItem.from_dict(d) for d in json.loads(h["items"])),
            submitter=h.get("submitter", ""),
            created_at=float(h["created_at"]),
            updated_at=float(h.get("updated_at", h["created_at"])),
            step=int(h.get("step", 0)),
            steps=int(h.get("steps", 0)),
            loss=float(h.get("loss", 0.0)),
            metrics=json.loads(h.get("metrics", "{}")),
            reasons=tuple(json.loads(h.get("reasons", "[]"))),
            error=h.get("error", ""),
            version=h.get("version", ""),
            plan=json.loads(h.get("plan", "{}")),
            note=h.get("note", ""),
            owner=h.get("owner", ""),
        )


def _encode(fields: dict[str, Any]) -> dict[Any, Any]:
    # Text to text; typed Any because redis-py's stubs want an invariant union mapping.
    out: dict[Any, Any] = {}
    for k, v in fields.items():
        out[k] = json.dumps(v) if isinstance(v, dict | list | tuple) else str(v)
    return out


class JobStore:
    """Job records, queue and events. Blocking API: run it through ``run_blocking``.

    Args:
        conn: the Redis connection.
        max_queued: queued jobs allowed at once (beyond: ResourceExhausted).
        prefix: key prefix (tests may isolate themselves with another).
        owner: this worker's id when several workers share the queue (see the module
            docstring); empty = the single-process layout.
        lease_seconds: how long the owner's lease lives unrenewed (``claim_idle_seconds``).
    """

    def __init__(
        self,
        conn: RedisConnection,
        max_queued: int = 100,
        prefix: str = "dmha:learn:",
        owner: str = "",
        lease_seconds: float = 60.0,
    ) -> None:
        self._conn = conn
        self._max_queued = max_queued
        # One hash tag for every key on a Redis Cluster: the queue, the claim lists and
        # the job records move together in transactions and scripts.
        self._p = f"{conn.tag(prefix.rstrip(':'))}:"
        self.owner = check_id(owner) if owner else ""
        self.lease_seconds = lease_seconds

    def _claimed_key(self, owner: str = "") -> str:
        return f"{self._p}claimed:{owner}" if owner else f"{self._p}claimed"

    def _unclaim(self, job_id: str, owner: str = "") -> None:
        self._call(lambda c: c.lrem(self._claimed_key(owner or self.owner), 0, job_id))

    def _call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        # Our clients decode replies to text (decode_responses=True); redis-py's stubs
        # type every reply as a wide union, so replies are Any here and used as text.
        return self._conn.call(fn, "training jobs")

    def _job_key(self, job_id: str) -> str:
        return redis_key(f"{self._p}job", check_id(job_id, "job_id"))

    def _events_key(self, job_id: str) -> str:
        return redis_key(f"{self._p}events", check_id(job_id, "job_id"))

    # ----------------------------------------------------------- submission

    def submit(self, items: Sequence[FeedbackItem], submitter: str, candidate: bool = False, note: str = "") -> Job:
        """Record feedback: queue it for training, or keep it as a candidate.

        Args:
            items: the feedback (at least one item).
            submitter: the submitting user's id.
            candidate: True for feedback from an ordinary user: stored, never trained
                until a trainer promotes it.
            note: why it was queued or kept (stored with the job).

        Returns:
            The new job (state ``queued`` or ``candidate``).

        Raises:
            InvalidArgument: no items.
            ResourceExhausted: the queue is full.
            RedisUnavailable: Redis is down (nothing was recorded).
        """
        if not items:
            raise InvalidArgument("items", "at least one feedback item is required")
        now = time.time()
        job = Job(new_id(), "candidate" if candidate else "queued", tuple(items), submitter, now, now, note=note)
        record = _encode(
            {
                "job_id": job.job_id,
                "state": job.state,
                "items": [it.to_dict() for it in items],
                "submitter": submitter,
                "created_at": repr(now),
                "updated_at": repr(now),
                "note": note,
            }
        )

        def run(c: redis.Redis) -> None:
            if not candidate and c.llen(f"{self._p}queue") >= self._max_queued:
                raise ResourceExhausted(f"the training queue is full ({self._max_queued} jobs)")
            pipe = c.pipeline(transaction=True)
            pipe.hset(self._job_key(job.job_id), mapping=record)
            pipe.zadd(f"{self._p}jobs", {job.job_id: now})
            if candidate:
                pipe.zadd(f"{self._p}candidates", {job.job_id: now})
            else:
                pipe.lpush(f"{self._p}queue", job.job_id)
            self._add_event(pipe, job.job_id, {"state": job.state, "at": repr(now)})
            pipe.execute()

        self._call(run)
        return job

    def _add_event(self, pipe: Any, job_id: str, fields: dict[str, Any]) -> None:
        pipe.xadd(self._events_key(job_id), _encode(fields), maxlen=_EVENTS_MAXLEN, approximate=True)
        pipe.expire(self._events_key(job_id), _EVENTS_TTL)

    # ---------------------------------------------------------------- reading

    def get(self, job_id: str) -> Job:
        """A job by id.

        Raises:
            NotFound: no such job.
        """
        h = self._call(lambda c: c.hgetall(self._job_key(job_id)))
        if not h:
            raise NotFound(f"no training job {job_id!r}")
        return Job._from_hash(h)

    def list(self, limit: int = 100, states: Collection[str] | None = None) -> builtins.list[Job]:
        """The newest jobs first.

        Args:
            limit: at most this many.
            states: only these states (None = all).
        """
        ids = self._call(lambda c: c.zrevrange(f"{self._p}jobs", 0, -1))
        out: builtins.list[Job] = []
        for job_id in ids:
            try:
                job = self.get(job_id)
            except NotFound:
                continue
            if states is None or job.state in states:
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    def list_candidates(self, limit: int = 100) -> builtins.list[Job]:
        """Candidate feedback awaiting a trainer, oldest first."""
        ids = self._call(lambda c: c.zrange(f"{self._p}candidates", 0, limit - 1))
        return [self.get(i) for i in ids]

    # -------------------------------------------------------------- promotion

    def promote_candidate(self, job_id: str) -> Job:
        """Queue a candidate for training.

        Raises:
            NotFound: no such job.
            FailedPrecondition: it is not a candidate.
            ResourceExhausted: the queue is full.
        """

        def run(c: redis.Redis) -> None:
            if c.llen(f"{self._p}queue") >= self._max_queued:
                raise ResourceExhausted(f"the training queue is full ({self._max_queued} jobs)")
            with c.pipeline(transaction=True) as pipe:
                # WATCH makes a concurrent promote of the same candidate lose cleanly.
                pipe.watch(self._job_key(job_id))
                state = pipe.hget(self._job_key(job_id), "state")
                if state is None:
                    raise NotFound(f"no training job {job_id!r}")
                if state != "candidate":
                    raise FailedPrecondition(f"job {job_id} is {state!s}, not a candidate")
                now = time.time()
                pipe.multi()
                pipe.hset(self._job_key(job_id), mapping={"state": "queued", "updated_at": repr(now)})
                pipe.zrem(f"{self._p}candidates", job_id)
                pipe.lpush(f"{self._p}queue", job_id)
                self._add_event(pipe, job_id, {"state": "queued", "at": repr(now)})
                pipe.execute()

        try:
            self._call(run)
        except redis.WatchError as exc:
            raise FailedPrecondition(f"job {job_id} changed concurrently; retry") from exc
        return self.get(job_id)

    def dismiss_candidate(self, job_id: str, reason: str = "dismissed by a trainer") -> Job:
        """Drop a candidate without training it (it ends ``failed`` with ``reason``).

        Raises:
            NotFound: no such job.
            FailedPrecondition: it is not a candidate.
        """
        job = self.transition(job_id, "failed", error=reason)
        self._call(lambda c: c.zrem(f"{self._p}candidates", job_id))
        return job

    # ---------------------------------------------------------------- worker

    def claim(self, timeout: float = 1.0) -> Job | None:
        """Take the oldest queued job (blocking up to ``timeout`` seconds).

        Keep ``timeout`` below the Redis socket timeout.

        Returns:
            The job, still ``queued`` (call :meth:`transition` to start it), or None.
        """
        if self.owner:
            self.renew()  # the lease exists before the job moves into the owner's list
        claimed = self._claimed_key(self.owner)
        job_id = self._call(
            # redis-py takes float seconds here; its stub says int.
            lambda c: c.blmove(f"{self._p}queue", claimed, timeout, "RIGHT", "LEFT")  # type: ignore[arg-type]
        )
        if job_id is None:
            return None
        if self.owner:
            self._call(lambda c: c.hset(self._job_key(job_id), "owner", self.owner))
        try:
            return self.get(job_id)
        except NotFound:
            self._unclaim(job_id)
            return None

    def transition(self, job_id: str, state: JobState, **fields: Any) -> Job:
        """Move a job to ``state`` (or record progress when ``state`` is unchanged).

        Args:
            job_id: the job.
            state: the new state; must be allowed from the current one.
            **fields: record fields to set (``step``, ``steps``, ``loss``, ``metrics``,
                ``reasons``, ``error``, ``version``, ``plan``).

        Returns:
            The updated job.

        Raises:
            NotFound: no such job.
            FailedPrecondition: the transition is not allowed.
        """
        now = time.time()
        current = self.get(job_id)
        if state not in _ALLOWED.get(current.state, frozenset()):
            raise FailedPrecondition(f"job {job_id}: {current.state} -> {state} is not allowed")
        update = _encode({**fields, "state": state, "updated_at": repr(now)})
        kept = ("state", "step", "steps", "loss", "metrics", "error", "version")
        event = {k: v for k, v in update.items() if k in kept}
        event["at"] = repr(now)

        def run(c: redis.Redis) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.hset(self._job_key(job_id), mapping=update)
            self._add_event(pipe, job_id, event)
            if state in TERMINAL_STATES:
                pipe.lrem(f"{self._p}claimed", 0, job_id)
                if current.owner:
                    pipe.lrem(self._claimed_key(current.owner), 0, job_id)
            pipe.execute()

        self._call(run)
        return self.get(job_id)

    def progress(self, job_id: str, step: int, steps: int, loss: float) -> None:
        """Record a training step (an event watchers see), best effort.

        A step not recorded while Redis is unavailable is only a missed event (the
        next one carries the same fields); the training job goes on rather than fail.
        """
        try:
            self.transition(job_id, "training", step=step, steps=steps, loss=loss)
        except RedisUnavailable as exc:
            log.warning("job %s: step %d/%d not recorded: %s", job_id, step, steps, exc)

    def settle(self, job_id: str, state: JobState, within: float, **fields: Any) -> Job | None:
        """:meth:`transition`, retried while Redis is unavailable for up to ``within`` seconds.

        For a worker that must not leave a job it holds running forever after an outage.

        Returns:
            The updated job, or None when Redis did not come back in time.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                return self.transition(job_id, state, **fields)
            except RedisUnavailable:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(1.0)

    def renew(self) -> None:
        """Keep this owner's lease alive for ``lease_seconds`` more (several-worker layout).

        Raises:
            RedisUnavailable: Redis is down.
        """
        if not self.owner:
            return
        ms = max(1, int(self.lease_seconds * 1000))

        def run(c: redis.Redis) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.set(f"{self._p}alive:{self.owner}", "1", px=ms)
            pipe.sadd(f"{self._p}workers", self.owner)
            pipe.execute()

        self._call(run)

    def release(self) -> None:
        """End this owner's lease at once (a clean shutdown; its jobs are settled next)."""
        if self.owner:
            self._call(lambda c: c.delete(f"{self._p}alive:{self.owner}"))

    def reclaim(self) -> tuple[builtins.list[str], builtins.list[str]]:
        """Settle the jobs of every owner whose lease expired (a worker that died).

        Each entry is taken out of the dead owner's list atomically, so of several
        processes reclaiming at once exactly one settles each job: a job still
        ``queued`` goes back to the head of the queue, one caught training is failed
        (as :meth:`recover` does), a finished one is only forgotten.

        Returns:
            ``(requeued, failed)`` job ids.

        Raises:
            RedisUnavailable: Redis is down.
        """
        requeued: builtins.list[str] = []
        failed: builtins.list[str] = []
        owners = self._call(lambda c: c.smembers(f"{self._p}workers"))
        for owner in sorted(owners):
            if owner == self.owner or self._alive(owner):
                continue
            claimed = self._claimed_key(owner)
            # Oldest claim last in the list: settle it first so requeued jobs keep their order.
            for job_id in reversed(self._claimed_ids(claimed)):
                state = self._take_back(claimed, job_id)
                if state == "queued":
                    requeued.append(job_id)
                elif state in RUNNING_STATES:
                    try:
                        self.transition(
                            job_id,
                            "failed",
                            error=f"interrupted while {state}: worker {owner} stopped renewing its claim "
                            f"(reclaimed after {self.lease_seconds:g}s)",
                        )
                        failed.append(job_id)
                    except (FailedPrecondition, NotFound):
                        pass  # settled meanwhile
            self._forget_owner(claimed, owner)
        if requeued or failed:
            log.warning("reclaimed jobs of stopped workers: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    def _claimed_ids(self, claimed: str) -> builtins.list[str]:
        return list(self._call(lambda c: c.lrange(claimed, 0, -1)))

    def _alive(self, owner: str) -> bool:
        key = f"{self._p}alive:{owner}"
        return bool(self._call(lambda c: c.exists(key)))

    def _take_back(self, claimed: str, job_id: str) -> str | None:
        keys = (claimed, f"{self._p}queue", self._job_key(job_id))
        state = self._call(lambda c: c.eval(_TAKE_BACK, 3, *keys, job_id))
        return None if state is None else str(state)

    def _forget_owner(self, claimed: str, owner: str) -> None:
        workers = f"{self._p}workers"
        self._call(lambda c: c.eval(_FORGET_OWNER, 2, claimed, workers, owner))

    def recover(self) -> tuple[builtins.list[str], builtins.list[str]]:
        """Call once at worker start: settle jobs a previous process left behind.

        With an ``owner`` (several workers) only the jobs of workers whose lease
        expired are settled (:meth:`reclaim`): the others are still running them.

        Returns:
            ``(requeued, failed)`` job ids.
        """
        if self.owner:
            return self.reclaim()
        requeued: builtins.list[str] = []
        failed: builtins.list[str] = []
        claimed = self._call(lambda c: c.lrange(f"{self._p}claimed", 0, -1))
        running = [j.job_id for j in self.list(limit=10_000, states=RUNNING_STATES)]
        for job_id in dict.fromkeys([*claimed, *running]):
            try:
                job = self.get(job_id)
            except NotFound:
                self._unclaim(job_id)
                continue
            if job.state == "queued":

                def requeue(c: redis.Redis, j: str = job_id) -> None:
                    pipe = c.pipeline(transaction=True)
                    pipe.lrem(f"{self._p}claimed", 0, j)
                    pipe.rpush(f"{self._p}queue", j)  # back at the head: it was next
                    pipe.execute()

                self._call(requeue)
                requeued.append(job_id)
            elif job.state in RUNNING_STATES:
                self.transition(job_id, "failed", error=f"interrupted while {job.state} (the process restarted)")
                failed.append(job_id)
            else:
                self._unclaim(job_id)
        # ``claimed`` holds the newest first; each was pushed back onto the head of the
        # queue in that order, so the oldest runs first. Report them oldest first too.
        requeued.reverse()
        if requeued or failed:
            log.warning("recovered jobs: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    # ---------------------------------------------------------------- watching

    def read_events(self, job_id: str, after: str, block_ms: int | None) -> builtins.list[tuple[str, dict[str, str]]]:
        """Entries of the job's event stream after entry id ``after`` (at most 100).

        Args:
            job_id: the job.
            after: the last entry id already read (``"0-0"``: from the start).
            block_ms: wait up to this long for a new entry; None = do not wait.

        Returns:
            ``(entry_id, fields)`` pairs in order.

        Raises:
            RedisUnavailable: Redis is down.
        """
        key = self._events_key(job_id)
        resp = self._call(lambda c: c.xread({key: after}, count=100, block=block_ms))
        return [(entry_id, fields) for _stream, entries in resp or [] for entry_id, fields in entries]

    def watch(self, job_id: str, timeout: float | None = None, block_ms: int = 500) -> JobWatch:
        """The job's events from the first one, until its terminal event.

        Iterating blocks (XREAD BLOCK, ``block_ms`` at a time) until the next event;
        a server shares its threads, so it reads in bounded slices with
        :meth:`JobWatch.poll` instead and waits between them off the thread.

        Args:
            job_id: the job.
            timeout: iteration stops after this many seconds without the terminal
                event (None: never).
            block_ms: how long one blocking read waits; keep it below the Redis
                socket timeout.

        Returns:
            An iterator of events in order, with :meth:`JobWatch.poll` for slices.

        Raises:
            NotFound: no such job.
        """
        self.get(job_id)
        return JobWatch(self, job_id, timeout, block_ms)
