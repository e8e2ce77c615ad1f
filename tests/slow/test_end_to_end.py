"""The real thing: `dmha serve` with the real default model, chatted with over the SDK and CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmha_client import DMHAClient

pytestmark = pytest.mark.slow

DMHA = str(Path(sys.executable).with_name("dmha"))


@pytest.fixture
def served(tmp_path, model_dir):
    env = {
        **os.environ,
        "DMHA_DATA_DIR": str(tmp_path),
        "DMHA_MODEL__PATH": str(model_dir),
        "DMHA_SERVER__METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [DMHA, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    address = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.match(r"DMHA ready on (\S+)", line):
            address = m.group(1)
            break
    if address is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"server did not start: {err[-3000:]}")
    token = subprocess.run(
        [DMHA, "token", "--user", "alice"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    yield address, token, env
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]  # SIGTERM is a clean shutdown


def test_capital_of_france_through_sdk_and_cli(served):
    address, token, env = served
    with DMHAClient(address, token) as client:
        assert client.health() == "SERVING"
        reply = client.chat("What is the capital of France?", max_new_tokens=24)
        assert "Paris" in reply.text, reply.text
        stream = client.chat_stream("What is the capital of France?", max_new_tokens=24)
        assert "Paris" in "".join(stream)
    done = subprocess.run(
        [DMHA, "chat", "--address", address, "--max-new-tokens", "24"],
        input="What is the capital of France?\n/quit\n",
        env={**env, "DMHA_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    bad = subprocess.run(
        [DMHA, "chat", "--address", address, "--token", "forged", "-m", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and bad.stderr.startswith("UNAUTHENTICATED")


def test_capital_of_france_through_the_gateway_command(served):
    """`dmha gateway` in front of `dmha serve`, called by the official OpenAI client."""
    from openai import OpenAI

    address, token, env = served
    proc = subprocess.Popen(
        [DMHA, "gateway", "--port", "0", "--address", address, "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.match(r"DMHA gateway on (\S+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        with OpenAI(base_url=f"{m.group(1)}v1", api_key=token, max_retries=0, timeout=120) as client:
            reply = client.chat.completions.create(
                model="dmha", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
            )
            assert "Paris" in reply.choices[0].message.content
            stream = client.chat.completions.create(
                model="dmha",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=24,
                stream=True,
            )
            assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]  # SIGTERM is a clean shutdown
