"""The embedded redis-server never outlives DMHA, and two never share one data dir
(issue 11, finding 6). Real processes: the real binary, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from dmha.config import RedisConfig
from dmha.errors import StartupError
from dmha.redis_connection import RedisConnection
from dmha.redis_process import embedded_redis_binary, process_start_time

pytestmark = pytest.mark.integration


def _gone(pid: int, start: int | None, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_start_time(pid) != start:
            return True
        time.sleep(0.05)
    return False


def test_redis_dies_with_a_kill_9_of_its_owner(tmp_path):
    """The owner is SIGKILLed (no cleanup at all runs); its redis-server follows it."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from pathlib import Path
                from dmha.config import RedisConfig
                from dmha.redis_connection import RedisConnection
                conn = RedisConnection(RedisConfig(), Path({str(tmp_path)!r}))
                conn.call(lambda c: c.set("acknowledged", "yes"))
                print(conn.pid, flush=True)
                time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        start = process_start_time(pid)
        assert start is not None
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        assert _gone(pid, start, within=10), "the embedded redis-server outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        assert owner.stdout is not None
        owner.stdout.close()
    # The next owner starts cleanly on the same directory, with the data.
    conn = RedisConnection(RedisConfig(), tmp_path)
    try:
        assert conn.call(lambda c: c.get("acknowledged")) == "yes"
    finally:
        conn.close()


def test_a_redis_server_left_running_is_stopped_before_a_new_one_starts(tmp_path):
    """The pid file path: an orphan (say, from a platform without the death signal) is reclaimed."""
    directory = tmp_path / "redis"
    directory.mkdir()
    sock = directory / "old.sock"
    orphan = subprocess.Popen(
        [
            embedded_redis_binary(),
            *("--port", "0", "--unixsocket", str(sock), "--dir", str(directory)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(directory / "old.log")),
        ],
        start_new_session=True,  # not tied to us: a true orphan-to-be
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "the orphan did not start"
            time.sleep(0.02)
        old = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
        old.set("from-the-orphan", "kept")
        old.close()
        (directory / "redis-server.pid").write_text(f"{orphan.pid} {process_start_time(orphan.pid)}\n")
        conn = RedisConnection(RedisConfig(), tmp_path)
        try:
            assert orphan.wait(10) == 0  # asked to stop (SIGTERM: it flushed and exited)
            assert conn.pid != orphan.pid
            assert conn.call(lambda c: c.get("from-the-orphan")) == "kept"
        finally:
            conn.close()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(10)


def test_a_stale_pid_file_never_kills_an_unrelated_process(tmp_path):
    """A reused pid (same number, other start time) is left alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_time(bystander.pid)
        assert start is not None
        (tmp_path / "redis").mkdir()
        (tmp_path / "redis" / "redis-server.pid").write_text(f"{bystander.pid} {start + 1}\n")
        conn = RedisConnection(RedisConfig(), tmp_path)
        conn.close()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_second_owner_of_one_data_dir_is_refused(tmp_path):
    first = RedisConnection(RedisConfig(), tmp_path)
    try:
        with pytest.raises(StartupError) as err:
            RedisConnection(RedisConfig(), tmp_path)
        assert f"pid {os.getpid()}" in str(err.value) and str(Path(tmp_path) / "redis") in str(err.value)
        assert first.call(lambda c: c.ping())  # the refused start left the first one alone
    finally:
        first.close()
    RedisConnection(RedisConfig(), tmp_path).close()  # free again once the first is closed
