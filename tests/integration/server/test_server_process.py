"""``dmha serve`` as a process: kill -9 leaves no redis-server behind, and the restart
runs one server on the data it left (issue 11, finding 6)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmha.redis_process import process_start_time
from dmha_client import DMHAClient, RetryPolicy

# Two starts of a real server process (~20 s each on 2 busy cores).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

DMHA = str(Path(sys.executable).with_name("dmha"))


def _env(data_dir: Path, model: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DMHA_DATA_DIR": str(data_dir),
        "DMHA_MODEL__PATH": str(model),
        "DMHA_MODEL__THREADS": "1",
        "DMHA_SERVER__METRICS_PORT": "0",
        "DMHA_MEMORY__LONGTERM__ENABLED": "false",
        "DMHA_LEARNING__ENABLED": "false",
    }


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [DMHA, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.match(r"DMHA ready on (\S+)", line):
            return proc, m.group(1)
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    pytest.fail("dmha serve did not start")


def _redis_servers_on(data_dir: Path) -> list[int]:
    """Pids of redis-server processes serving ``data_dir`` (by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "redis-server" in cmdline and str(data_dir) in cmdline:
            found.append(int(entry.name))
    return found


def _token(data_dir: Path, user: str) -> str:
    """What ``dmha token`` prints, minted here (the command would load the whole stack again)."""
    from dmha.config import AuthConfig
    from dmha.runtime import Authenticator, load_secrets

    secret, api_key = load_secrets(AuthConfig(), data_dir)
    return Authenticator(AuthConfig(), secret, api_key).issue(user, ("user",))[0]


def _wait_until(predicate, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_of_the_server_takes_its_redis_along_and_a_restart_reuses_the_data(tmp_path, tiny_model_dir):
    env = _env(tmp_path, tiny_model_dir)
    first, address = _serve(env)
    try:
        token = _token(tmp_path, "alice")
        with DMHAClient(address, token, timeout=60) as alice:
            sid = alice.chat("remember me", max_new_tokens=2).session_id
        [redis_pid] = _redis_servers_on(tmp_path)
        start = process_start_time(redis_pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert _wait_until(lambda: process_start_time(redis_pid) != start, within=10), "redis-server was orphaned"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        assert first.stdout is not None
        first.stdout.close()

    second, address = _serve(env)
    try:
        assert len(_redis_servers_on(tmp_path)) == 1
        with DMHAClient(address, token, timeout=60, retry=RetryPolicy(attempts=5, initial=0.3)) as alice:
            assert [t.text for t in alice.get_session(sid).turns][0] == "remember me"
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        assert _wait_until(lambda: not _redis_servers_on(tmp_path), within=10)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
        assert second.stdout is not None
        second.stdout.close()
