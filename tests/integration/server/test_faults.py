"""Backend faults (issue 11): each gives UNAVAILABLE quickly, health says which part is
down, and the server recovers without a restart when the part comes back.

Real faults on real processes: the embedded redis-server stopped with SIGSTOP, a
Milvus (Lite) server process killed and restarted, the data dir's file system
filled to the last byte, the executor's threads all held.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmha_client import errors
from tests.integration.conftest import integration_config, start_live_server

pytestmark = pytest.mark.integration


async def wait_health(client, expected: str, service: str = "", within: float = 10.0) -> float:
    """Poll health until ``service`` reports ``expected``; returns the seconds it took."""
    start = time.monotonic()
    while True:
        status = await client.health(service)
        if status == expected:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"health({service!r}) is {status} after {within} s, expected {expected}")
        await asyncio.sleep(0.1)


async def down_parts(client) -> list[str]:
    return [part for part, status in (await client.health_parts()).items() if status != "SERVING"]


@pytest.fixture
async def server(tmp_path, tiny_model_dir):
    async for live in start_live_server(integration_config(tmp_path, tiny_model_dir)):
        yield live


async def test_hung_redis_fails_fast_health_flips_and_it_recovers(server):
    """Finding 5: with Redis stopped each call took ~26 s to fail, health flipped after ~28 s."""
    pid = server.runtime.redis.pid
    timeout = server.runtime.cfg.redis.socket_timeout
    async with server.client("alice") as alice, server.client(None) as anonymous:
        sid = (await alice.chat("remember me", max_new_tokens=2)).session_id
        assert await anonymous.health() == "SERVING"
        assert await anonymous.health_parts() == dict.fromkeys(("redis", "executor", "generation", "disk"), "SERVING")
        os.kill(pid, signal.SIGSTOP)
        try:
            # The first call waits one socket timeout at most (no retries of a timeout).
            start = time.monotonic()
            with pytest.raises(errors.Unavailable):
                await alice.get_session(sid)
            assert time.monotonic() - start < timeout + 1.5
            # A burst fails at once instead of queueing behind the executor's threads.
            start = time.monotonic()
            burst = await asyncio.gather(
                *(alice.list_sessions() for _ in range(16)),
                *(alice.chat(f"hello {i}", session_id=sid, max_new_tokens=2) for i in range(4)),
                return_exceptions=True,
            )
            assert all(isinstance(r, errors.Unavailable) for r in burst), burst
            assert time.monotonic() - start < timeout + 1.5
            # Health tells, and says which part.
            await wait_health(anonymous, "NOT_SERVING", within=5)
            assert await anonymous.health("dmha.v1.ChatService") == "NOT_SERVING"
            assert await down_parts(anonymous) == ["redis"]
        finally:
            os.kill(pid, signal.SIGCONT)
        # No restart: health and calls come back, and nothing acknowledged was lost.
        await wait_health(anonymous, "SERVING", within=5)
        assert await down_parts(anonymous) == []
        reply = await alice.chat("back?", session_id=sid, max_new_tokens=2)
        assert reply.session_id == sid
        assert [t.text for t in (await alice.get_session(sid)).turns][0] == "remember me"


@pytest.fixture
async def sensitive_server(tmp_path, tiny_model_dir):
    cfg = integration_config(tmp_path, tiny_model_dir, health={"stall_seconds": 1.0})
    async for live in start_live_server(cfg):
        yield live


async def test_wedged_executor_is_not_serving_and_named(sensitive_server):
    """Finding 11: health said SERVING while every executor thread was stuck."""
    from dmha.executor import run_blocking

    server = sensitive_server
    release = threading.Event()
    async with server.client(None) as anonymous:
        await wait_health(anonymous, "SERVING")
        threads = server.runtime.cfg.server.executor_threads
        stuck = [asyncio.ensure_future(run_blocking(release.wait, 60)) for _ in range(threads)]
        try:
            await wait_health(anonymous, "NOT_SERVING", within=10)
            assert await down_parts(anonymous) == ["executor"]
        finally:
            release.set()
            await asyncio.gather(*stuck)
        await wait_health(anonymous, "SERVING", within=10)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "48m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(directory: Path) -> Path:
    """Write until the file system refuses even 512 bytes (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1024 * 1024
        while size >= 512:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return filler


async def test_full_disk_is_unavailable_not_internal_and_recovers(small_disk, tiny_model_dir):
    """Finding 11: health said SERVING while every write failed on a full disk."""
    cfg = integration_config(small_disk, tiny_model_dir, health={"min_free_disk_mb": 1})
    async for server in start_live_server(cfg):
        async with server.client("alice", retry=1) as alice, server.client(None) as anonymous:
            sid = (await alice.chat("remember me", max_new_tokens=2)).session_id
            await wait_health(anonymous, "SERVING")
            filler = _fill(small_disk)
            try:
                await wait_health(anonymous, "NOT_SERVING", within=10)
                assert "disk" in await down_parts(anonymous)
                # Small writes may still fit in the last pages already allocated; past
                # them, writes fail with a retryable status, never INTERNAL.
                failures = 0
                for i in range(40):
                    try:
                        await alice.chat(f"write {i} " + "x" * 1500, session_id=sid, max_new_tokens=2)
                    except errors.Unavailable:
                        failures += 1
                        if failures == 3:
                            break
                assert failures == 3
            finally:
                filler.unlink()
            await wait_health(anonymous, "SERVING", within=15)
            async with server.client("alice", retry=5) as again:
                await again.chat("after", session_id=sid, max_new_tokens=2)
                texts = [t.text for t in (await again.get_session(sid)).turns]
            assert texts[0] == "remember me" and "after" in texts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_milvus(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, "the Milvus server exited"
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the Milvus server did not listen")


@pytest.fixture
def milvus_server(tmp_path):
    port = _free_port()
    state = {"proc": _start_milvus(tmp_path / "milvus", port), "port": port}
    yield state
    state["proc"].kill()
    state["proc"].wait(10)


async def test_milvus_down_is_unavailable_then_recovers(tmp_path, tiny_model_dir, milvus_server):
    """A remote Milvus killed mid-run, then restarted: UNAVAILABLE fast, health names it, recovery."""
    uri = f"http://127.0.0.1:{milvus_server['port']}"
    cfg = integration_config(tmp_path, tiny_model_dir, memory={"longterm": {"enabled": True, "uri": uri}})
    async for server in start_live_server(cfg):
        async with server.client("alice") as alice, server.client(None) as anonymous:
            # A memory to read back (stored through the core: no RPC adds one directly).
            [memory_id] = await asyncio.to_thread(
                server.runtime.longterm.add_texts, "alice", ["My sister lives in Lisbon."]
            )
            await wait_health(anonymous, "SERVING")
            milvus_server["proc"].kill()
            milvus_server["proc"].wait(10)
            await wait_health(anonymous, "NOT_SERVING", within=5)
            assert await down_parts(anonymous) == ["milvus"]
            assert set(await anonymous.health_parts()) == {"redis", "milvus", "executor", "generation", "disk"}
            start = time.monotonic()
            with pytest.raises(errors.Unavailable):
                await alice.memory_get(memory_id)
            assert time.monotonic() - start < 5
            # Chat still answers from working memory, with a warning.
            reply = await alice.chat("Where does my sister live?", max_new_tokens=2)
            assert any("long-term memory" in w for w in reply.reply.warnings)
            milvus_server["proc"] = _start_milvus(tmp_path / "milvus", milvus_server["port"])
            await wait_health(anonymous, "SERVING", within=15)
            assert (await alice.memory_get(memory_id)).text == "My sister lives in Lisbon."
