"""A hung Redis, timed (issue 11, finding 5): how fast calls fail, how fast health
tells, how fast service comes back.

Runs the server in this process (real model, embedded Redis, as the integration
tests do), stops its redis-server with SIGSTOP, and times: the first call (it waits
out one socket timeout), a burst of 20 concurrent calls, health turning NOT_SERVING,
then after SIGCONT health turning SERVING and the first successful call. Repeats
``--repeats`` times and prints the medians and one JSON line.

    python bench/faults.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def until(client, status: str) -> None:
    while await client.health() != status:
        await asyncio.sleep(0.05)


async def measure(model_dir: Path, repeats: int) -> list[dict[str, float]]:
    from dmha_client import errors
    from tests.integration.conftest import integration_config, start_live_server

    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        async for server in start_live_server(integration_config(Path(data_dir), model_dir)):
            async with server.client("alice") as alice, server.client(None) as anonymous:
                sid = (await alice.chat("remember me", max_new_tokens=2)).session_id
                for _ in range(repeats):
                    await until(anonymous, "SERVING")
                    await asyncio.sleep(1.0)
                    pid = server.runtime.redis.pid
                    os.kill(pid, signal.SIGSTOP)
                    stopped = time.monotonic()
                    try:
                        with contextlib.suppress(errors.Unavailable):
                            await alice.get_session(sid)
                        first = time.monotonic() - stopped
                        start = time.monotonic()
                        burst = await asyncio.gather(
                            *(alice.list_sessions() for _ in range(20)), return_exceptions=True
                        )
                        burst_s = time.monotonic() - start
                        assert all(isinstance(r, errors.Unavailable) for r in burst)
                        await until(anonymous, "NOT_SERVING")
                        flipped = time.monotonic() - stopped
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    resumed = time.monotonic()
                    await until(anonymous, "SERVING")
                    back = time.monotonic() - resumed
                    await alice.get_session(sid)
                    served = time.monotonic() - resumed
                    rows.append(
                        {"first_call_s": first, "burst20_s": burst_s, "not_serving_s": flipped, "serving_again_s": back,
                         "first_success_s": served}
                    )  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, help="model folder (default: the converted default model)")
    args = parser.parse_args()

    from dmha.config import RedisConfig, default_data_dir
    from dmha.llm.model_store import ensure_model

    rows = asyncio.run(measure(args.model or ensure_model(None, default_data_dir()), args.repeats))
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"redis.socket_timeout {RedisConfig().socket_timeout:g} s; medians of {len(rows)} SIGSTOP/SIGCONT cycles:")
    print(f"  first call UNAVAILABLE after   {median['first_call_s']:.2f} s")
    print(f"  20 concurrent calls, all failed {median['burst20_s']:.2f} s")
    print(f"  health NOT_SERVING after        {median['not_serving_s']:.2f} s")
    print(f"  SIGCONT -> health SERVING       {median['serving_again_s']:.2f} s")
    print(f"  SIGCONT -> first call served    {median['first_success_s']:.2f} s")
    print(json.dumps({"bench": "faults", "machine": f"{os.cpu_count()} cores, CPU", "median": median, "runs": rows}))


if __name__ == "__main__":
    main()
