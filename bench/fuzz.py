"""Fuzz every RPC of a real server process with hostile requests (issue 11).

Starts ``dmha serve`` (real model unless ``--model``, embedded Redis, Milvus Lite;
no per-user rate limit so requests reach the handlers; learning off so no training
competes for the cores; replies capped at 8 tokens), then sends ``--requests``
requests drawn by hypothesis from the wire contract (the strategy of
``tests/integration/server/rpc_fuzz.py``: every method, edge-valued fields, raw
undecodable bytes, every kind of token). Prints the status counts, the statuses
that mean a bug (INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS), whether the server
process survived and stayed healthy, and its RSS before and after.

    python bench/fuzz.py [--requests 10000] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import mint, rss_mib, start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--model", type=Path, help="model folder (default: the converted default model)")
    args = parser.parse_args()

    import grpc
    import jwt
    from hypothesis import HealthCheck, given, settings

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model
    from dmha_client import DMHAClient
    from tests.integration.server.rpc_fuzz import BAD_CODES, Call, calls, send

    model_dir = args.model or ensure_model(None, default_data_dir())
    os.environ["DMHA_LIMITS__MAX_NEW_TOKENS"] = "8"
    os.environ["DMHA_LIMITS__DEFAULT_NEW_TOKENS"] = "8"
    seen: Counter[str] = Counter()
    bad: list[str] = []
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, _env = start_server(data_dir, model_dir)
        try:
            rss_start = rss_mib(proc.pid)
            now = int(time.time())
            tokens = {
                "alice": mint(data_dir, "alice"),
                "bob": mint(data_dir, "bob"),
                "trainer": mint(data_dir, "carol", "trainer"),
                "admin": mint(data_dir, "root", "admin"),
                "none": "",
                "forged": jwt.encode(
                    {"sub": "alice", "roles": ["admin"], "iat": now, "exp": now + 86400, "iss": "dmha"},
                    "not-the-secret-" + "x" * 32,
                    algorithm="HS256",
                ),
            }
            start = time.perf_counter()
            with grpc.insecure_channel(address) as channel:

                @settings(
                    max_examples=args.requests,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(calls())
                def fuzz(call: Call) -> None:
                    code = send(channel, call, tokens)
                    seen[f"{call.method.containing_service.name}.{call.method.name}: {code}"] += 1
                    if code in BAD_CODES:
                        bad.append(f"{call!r} -> {code}")
                    done = sum(seen.values())
                    if done % 500 == 0:
                        print(f"{done} requests, {len(bad)} bad, {time.perf_counter() - start:.0f} s", flush=True)

                fuzz()
            wall = time.perf_counter() - start
            alive = proc.poll() is None
            with DMHAClient(address, tokens["bob"], timeout=120) as bob:
                health = bob.health()
                parts = bob.health_parts()
                served = bob.chat("Hello after the fuzz.", max_new_tokens=4).session_id != ""
            rss_end = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        clean_exit = proc.returncode == 0
    by_code: Counter[str] = Counter()
    for key, n in seen.items():
        by_code[key.rsplit(": ", 1)[1]] += n
    print(f"\n{sum(seen.values())} requests in {wall:.0f} s over {len({k.split(':')[0] for k in seen})} RPCs")
    print("statuses:", dict(by_code.most_common()))
    print(f"bad statuses: {len(bad)}")
    for line in bad[:20]:
        print("  ", line)
    print(f"server alive: {alive}, health after: {health} {parts}, served a chat after: {served}")
    print(f"server RSS: {rss_start:.0f} MiB before, {rss_end:.0f} MiB after; clean SIGTERM exit: {clean_exit}")
    summary = {
        "bench": "fuzz",
        "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
        "requests": sum(seen.values()),
        "wall_s": wall,
        "statuses": dict(by_code),
        "bad": len(bad),
        "alive": alive,
        "health_after": health,
        "served_after": served,
        "clean_exit": clean_exit,
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
