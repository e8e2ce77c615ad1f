"""Scale-out with real processes: one redis-server, one Milvus Lite server, two
``dmha serve --no-train`` replicas and ``dmha worker`` processes sharing a data dir and
registry (tiny model).

Every process is a real ``dmha`` command on 127.0.0.1; the test talks to them only
through the SDK and through Redis, as a load balancer and an operator would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmha.auth.tokens import Authenticator, load_secrets
from dmha.config import load_config
from dmha.redis_connection import embedded_redis_binary
from dmha_client import DMHAClient, RetryPolicy, errors
from tests.integration.conftest import RELAXED_LEARNING
from tests.integration.milvus_server import MilvusLiteServer, start_milvus_lite
from tests.integration.redis_cluster import RedisClusterProcesses

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Faster lease and live-pointer checks than the defaults, so failover shows in seconds.
RELAXED = {**RELAXED_LEARNING, "live_poll_seconds": 0.5, "claim_idle_seconds": 3.0}
RELAXED.pop("enabled")  # each process's role decides whether it trains
# A worker whose update runs until it is killed (for the reclaim test).
ENDLESS = {
    "DMHA_LEARNING__STEPS": "100000",
    "DMHA_LEARNING__LEARNING_RATE": "1e-5",
    "DMHA_LEARNING__MAX_TRAIN_SECONDS": "600",
    "DMHA_LEARNING__META__ENABLED": "false",
}


def _dmha() -> list[str]:
    script = Path(sys.executable).with_name("dmha")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dmha_cli.main"]


@dataclass
class Proc:
    """A ``dmha`` child process and what its ready line said."""

    name: str
    popen: subprocess.Popen[str]
    log: Path
    ready: str = ""

    @property
    def address(self) -> str:
        return self.ready.rsplit(" ", 1)[-1]

    def kill9(self) -> None:
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Cluster:
    root: Path
    config: Path
    data_dir: Path
    redis_url: str
    env: dict[str, str]
    auth: Authenticator
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Proc:
        log = self.root / f"{name}.log"
        cmd = [*_dmha(), *args, "--config", str(self.config), "--data-dir", str(self.data_dir)]
        with log.open("w") as err:
            popen = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**self.env, **(env or {})},
            )
        proc = Proc(name, popen, log)
        found = threading.Event()

        def read() -> None:
            assert popen.stdout is not None
            with popen.stdout:
                for line in popen.stdout:
                    if "ready" in line and not found.is_set():
                        proc.ready = line.strip()
                        found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout):
            popen.kill()
            raise AssertionError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        self.procs[name] = proc
        return proc

    def client(self, replica: str, user: str, *roles: str, retry: int = 1) -> DMHAClient:
        token = self.auth.issue(user, roles or ("user",))[0]
        policy = RetryPolicy(attempts=retry, initial=0.3)
        return DMHAClient(self.procs[replica].address, token, timeout=60, retry=policy)

    def balanced_client(self, replicas: list[str], user: str, retry: int = 4) -> DMHAClient:
        """One client over several replicas, as an application behind no load balancer uses it."""
        token = self.auth.issue(user, ("user",))[0]
        addresses = [self.procs[r].address for r in replicas]
        return DMHAClient(addresses, token, timeout=60, retry=RetryPolicy(attempts=retry, initial=0.3))

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


def _start_redis(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = root / "redis.sock"
    args = [
        embedded_redis_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--dir",
        str(root),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--logfile",
        str(root / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    return proc, f"unix://{sock}"


@contextlib.contextmanager
def _processes(root: Path, url: str, tiny_model_dir: Path, milvus: str, collection: str) -> Iterator[Cluster]:
    """Replicas ``a`` and ``b`` and a worker over the Redis at ``url`` and the Milvus at ``milvus``."""
    data_dir = root / "data"
    # Turns move to Milvus two at a time once a session holds more than 20.
    longterm = {"enabled": True, "uri": milvus, "collection": collection, "archive_batch": 2}
    cfg = {
        "redis": {"url": url},
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": None, "grace_seconds": 0},
        "model": {"path": str(tiny_model_dir), "device": "cpu", "threads": 1, "max_context_tokens": 1024},
        "limits": {"max_message_bytes": 2000, "default_new_tokens": 16, "rate_limit_per_minute": 600},
        "memory": {"longterm": longterm},
        "learning": {**RELAXED, "registry_dir": str(root / "registry")},
    }
    config = root / "dmha.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DMHA_MODEL__THREADS": "1", "HF_HUB_OFFLINE": "1"}
    loaded = load_config(config, data_dir=str(data_dir))
    secret, api_key = load_secrets(loaded.auth, data_dir)  # the file every process then shares
    c = Cluster(root, config, data_dir, url, env, Authenticator(loaded.auth, secret, api_key))
    try:
        c.start("a", "serve", "--no-train", "--port", "0")
        c.start("b", "serve", "--no-train", "--port", "0")
        c.start("worker", "worker")
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def milvus_server() -> Iterator[MilvusLiteServer]:
    """One ``milvus-lite server`` for every process of the module (as on one host)."""
    root = Path(tempfile.mkdtemp(prefix="dmha-milvus-"))
    server = start_milvus_lite(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, milvus_server: MilvusLiteServer) -> Iterator[Cluster]:
    # A short path: unix socket names are limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="dmha-scale-"))
    redis_proc, url = _start_redis(root)
    try:
        with _processes(root, url, tiny_model_dir, milvus_server.uri, "dmha_scale") as c:
            yield c
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_state_written_through_one_replica_is_read_through_the_other(cluster: Cluster) -> None:
    with cluster.client("a", "alice") as a, cluster.client("b", "alice") as b, cluster.client("b", "bob") as bob:
        told = a.kb_tell("fact: zed.age = 30")
        assert len(told.accepted) == 1
        # The other replica answers from the statement at once, and rejects its contradiction.
        assert b.kb_ask("zed.age = 30").verdict == "ENTAILED"
        clash = b.kb_tell("fact: zed.age = 31 [confidence=0.5]")
        assert not clash.accepted and len(clash.rejected) == 1
        # A conversation started on A continues on B with its history.
        first = a.chat("hello there", max_new_tokens=2)
        b.chat("and again", session_id=first.session_id, max_new_tokens=2)
        turns = a.get_session(first.session_id).turns
        assert [t.text for t in turns if t.role == "user"] == ["hello there", "and again"]
        # Isolation holds across replicas too.
        with pytest.raises(errors.NotFound):
            bob.get_session(first.session_id)


def _found(client: DMHAClient, query: str, word: str) -> bool:
    return any(word in hit.memory.text for hit in client.memory_search(query, k=5))


def test_a_memory_written_through_one_replica_is_found_through_the_other(cluster: Cluster) -> None:
    # Both replicas use one Milvus (a milvus-lite server here): what A archives, B finds.
    with cluster.client("a", "mona") as a, cluster.client("b", "mona") as b, cluster.client("b", "nils") as nils:
        facts = ["My sister Margaret lives in Lisbon.", "I play the bassoon on Sundays."]
        sid = a.chat(facts[0], max_new_tokens=2).session_id
        for text in [facts[1]] + [f"filler message {i}" for i in range(9)]:
            a.chat(text, session_id=sid, max_new_tokens=2)
        # 11 exchanges = 22 turns > 20: A moved the first exchange to Milvus.
        _until(lambda: _found(b, "Where does Margaret live?", "Lisbon"), 60, "A's memory found through B")
        assert not _found(b, "Which instrument do I play?", "bassoon")  # still in working memory
        # B now holds mona's hot index; the next memory A writes announces itself, so
        # B drops that index instead of answering from a stale one.
        a.chat("filler message 9", session_id=sid, max_new_tokens=2)
        _until(lambda: _found(b, "Which instrument do I play?", "bassoon"), 30, "A's next memory found through B")
        one = next(h.memory.id for h in b.memory_search("Where does Margaret live?", k=5) if "Lisbon" in h.memory.text)
        assert a.memory_get(one).id == one
        with pytest.raises(errors.NotFound):
            nils.memory_get(one)  # another user, through either replica
        assert not _found(nils, "Where does Margaret live?", "Lisbon")
        # A delete through B is seen through A.
        assert b.memory_delete(everything=True) >= 4
        with pytest.raises(errors.NotFound):
            a.memory_get(one)
        assert not _found(a, "Where does Margaret live?", "Lisbon")


def test_rate_limit_is_shared_by_the_replicas(cluster: Cluster) -> None:
    # 600/minute per user across the cluster: one bucket, whichever replica is asked.
    # The bucket refills at 10/s, so how many calls pass before the first refusal
    # depends on how fast they go: one shared bucket lets 600 + 10/s through, two
    # per-replica buckets would let twice that through.
    with cluster.client("a", "rita") as a, cluster.client("b", "rita") as b:
        passed, started = 0, time.monotonic()
        for i in range(4000):
            try:
                (a if i % 2 else b).list_sessions()
            except errors.ResourceExhausted:
                break
            passed += 1
        else:
            pytest.fail("4000 calls in a row were never rate-limited")
        assert passed <= 600 + 10 * (time.monotonic() - started) + 20


def test_a_job_trained_by_the_worker_goes_live_on_both_replicas(cluster: Cluster) -> None:
    with (
        cluster.client("a", "tina", "trainer") as trainer,
        cluster.client("b", "tina", "trainer") as trainer_b,
        cluster.client("a", "alice") as a,
        cluster.client("b", "alice") as b,
    ):
        before = a.chat("hi", max_new_tokens=1).reply.model_version
        resp = trainer.submit_feedback("What is the capital of Zubrowka?", "Vlorn")
        job = trainer_b.wait_job(resp.job_id, timeout=240)  # watched through the other replica
        assert job.state == "deployed", job.message
        assert job.version and job.version != before
        started = time.monotonic()
        for client in (a, b):
            _until(
                lambda c=client: c.chat("hi", max_new_tokens=1).reply.model_version == job.version,
                15,
                f"{job.version} live on every replica",
            )
        assert time.monotonic() - started < 15
        live = [v.id for v in b.list_versions() if v.live]
        assert live == [job.version]


def test_an_admin_rollback_on_one_replica_reaches_the_other(cluster: Cluster) -> None:
    with cluster.client("b", "root", "admin") as admin, cluster.client("a", "alice") as a:
        versions = admin.list_versions()
        live = next(v for v in versions if v.live)
        if live.id == "base":
            pytest.skip("needs a deployed version (the previous test)")
        back = admin.rollback()
        _until(lambda: a.chat("hi", max_new_tokens=1).reply.model_version == back.id, 15, "the rollback on A")
        admin.promote_version(live.id)
        _until(lambda: a.chat("hi", max_new_tokens=1).reply.model_version == live.id, 15, "the promotion on A")


def test_a_worker_killed_mid_job_has_its_job_reclaimed(cluster: Cluster) -> None:
    cluster.procs.pop("worker").stop()  # a clean stop gives its lease up
    slow = cluster.start("slow-worker", "worker", env=ENDLESS)
    with cluster.client("a", "tina", "trainer") as trainer:
        job_id = trainer.submit_feedback("Who painted the Zubrowka mural?", "Agatha").job_id
        _until(lambda: trainer.get_job(job_id).step >= 2, 240, "the slow worker to train")
        slow.kill9()
        cluster.procs.pop("slow-worker")
        # No worker runs: a replica notices the lease expire and settles the job cleanly.
        job = _until(
            lambda: (j := trainer.get_job(job_id)).state == "failed" and j,
            30,
            "the job to be reclaimed",
        )
        assert "stopped renewing its claim" in job.message
        # A new worker trains the next job: nothing is stuck.
        cluster.start("worker", "worker")
        nxt = trainer.submit_feedback("What is the capital of Zubrowka?", "Vlorn")
        assert trainer.wait_job(nxt.job_id, timeout=240).state == "deployed"


def test_kill_9_of_a_replica_mid_stream_loses_no_acknowledged_turn(cluster: Cluster) -> None:
    with cluster.client("a", "carol") as a, cluster.client("b", "carol", retry=4) as b:
        sid = a.chat("message 0", max_new_tokens=2).session_id
        for i in (1, 2):
            a.chat(f"message {i}", session_id=sid, max_new_tokens=2)  # acknowledged turns
        stream = a.chat_stream("tell me a long story", session_id=sid, max_new_tokens=200)
        next(iter(stream))  # A is generating
        cluster.procs["a"].kill9()
        with pytest.raises(errors.DMHAError):
            for _ in stream:
                pass
        # B keeps serving, and every acknowledged turn is there.
        users = [t.text for t in b.get_session(sid).turns if t.role == "user"]
        assert users[:3] == ["message 0", "message 1", "message 2"]
        assert b.chat("still there?", session_id=sid, max_new_tokens=2).session_id == sid


def test_a_client_over_several_replicas_fails_over_when_one_is_killed(cluster: Cluster) -> None:
    up = [name for name in ("a", "b") if name in cluster.procs and cluster.procs[name].popen.poll() is None]
    cluster.start("c", "serve", "--no-train", "--port", "0")
    with cluster.balanced_client([up[0], "c"], "dora") as client:
        sid = client.chat("before 0", max_new_tokens=2).session_id
        for i in (1, 2, 3):
            client.chat(f"before {i}", session_id=sid, max_new_tokens=2)  # spread over both
        cluster.procs.pop("c").kill9()
        # Every call after the kill succeeds: a call that met the dead replica is retried.
        for i in range(4):
            assert client.chat(f"after {i}", session_id=sid, max_new_tokens=2).session_id == sid
        users = [t.text for t in client.get_session(sid).turns if t.role == "user"]
        assert users == [f"before {i}" for i in range(4)] + [f"after {i}" for i in range(4)]


def test_the_same_processes_over_a_redis_cluster(
    tiny_model_dir: Path,
    redis_cluster: RedisClusterProcesses,
    milvus_server: MilvusLiteServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The same suite with `dmha serve --no-train` and `dmha worker` given a
    # redis+cluster:// URL (kill -9 of a replica last: it leaves one replica up).
    redis_cluster.flush()
    root = tmp_path_factory.mktemp("on-cluster")
    with _processes(root, redis_cluster.url, tiny_model_dir, milvus_server.uri, "dmha_on_cluster") as on_cluster:
        test_state_written_through_one_replica_is_read_through_the_other(on_cluster)
        test_a_memory_written_through_one_replica_is_found_through_the_other(on_cluster)
        test_a_job_trained_by_the_worker_goes_live_on_both_replicas(on_cluster)
        test_an_admin_rollback_on_one_replica_reaches_the_other(on_cluster)
        test_rate_limit_is_shared_by_the_replicas(on_cluster)
        test_a_worker_killed_mid_job_has_its_job_reclaimed(on_cluster)
        test_kill_9_of_a_replica_mid_stream_loses_no_acknowledged_turn(on_cluster)
        test_a_client_over_several_replicas_fails_over_when_one_is_killed(on_cluster)
