"""Scale-out (issue 14): one replica vs several over one shared Redis, in one run.

Starts a ``redis-server`` (the binary the embedded Redis ships) and ``--replicas``
``dmha serve --no-train`` processes sharing it, one data folder (secrets) and one
registry folder (real model, long-term memory off: Milvus Lite is one process's file;
learning off in the replicas, nothing trains). Then:

1. **Throughput**: ``--clients`` clients (distinct users) each stream ``--rounds``
   replies of ``--tokens`` tokens, once over the first replica only and once over all
   of them (``--spread even``: client i on replica i mod N; ``sdk``: every client
   given the whole list, the SDK's round-robin; ``sticky``: the whole list with
   ``sticky=True``, each user on the replica its subject hashes to); the two layouts
   alternate ``--repeats`` times so both see the same machine load. Reports the
   aggregate completion tokens per second and TTFT p50/p99 of each layout.
2. **Swap propagation**: an admin promotes a version (and rolls back) through the
   first replica; the time from the RPC's return until every replica answers with
   that version, ``--swaps`` times. The version is registered by this script with a
   negligible delta (1e-6 on one matrix, untrained): what is timed is the pointer,
   the announcement and each replica loading and hot-swapping a registry version,
   not training.
3. **Failover**: a client over all replicas chats in a loop; one replica is killed
   with SIGKILL; reports the failed calls (should be none: UNAVAILABLE is retried on
   another replica) and the longest gap between two answered calls around the kill.

    python bench/scale.py [--replicas 2] [--clients 4] [--rounds 2] [--tokens 32] [--repeats 2]
                          [--spread even|sdk|sticky] [--swaps 3] [--failover-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Tell me about lighthouses."


def start_redis(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    from dmha.redis_connection import embedded_redis_binary

    sock = root / "redis.sock"
    args = [embedded_redis_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(root), "--save", ""]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("redis-server did not start")
        time.sleep(0.02)
    return proc, f"unix://{sock}"


def start_replica(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    dmha = str(Path(sys.executable).with_name("dmha"))
    proc = subprocess.Popen([dmha, "serve", "--no-train", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"DMHA ready on (\S+)", line):
            threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("a replica failed to start")


def mint(data_dir: Path, user: str, *roles: str) -> str:
    from dmha.config import AuthConfig
    from dmha.runtime import Authenticator, load_secrets

    secret, key = load_secrets(AuthConfig(), data_dir)
    return Authenticator(AuthConfig(), secret, key).issue(user, roles or ("user",))[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def throughput(
    addresses: list[str], tokens: list[str], rounds: int, n_tokens: int, spread: str = "even"
) -> dict[str, float]:
    """Every client streams ``rounds`` replies at once; aggregate tokens/s and TTFT.

    ``spread``: ``even`` gives client i replica i mod N (what a load balancer in front
    would do); ``sdk`` gives every client the whole list (the SDK's round-robin, which
    with few clients and few calls may put more of them on one replica); ``sticky``
    gives every client the whole list with ``sticky=True`` (each user stays on the
    replica its token's subject hashes to: with few users, the split may be uneven).
    """
    from dmha_client import DMHAClient

    ttft: list[float] = []
    done_tokens = [0]
    errors = [0]
    lock = threading.Lock()

    def client(i: int, token: str) -> None:
        target = addresses if spread in ("sdk", "sticky") else addresses[i % len(addresses)]
        with DMHAClient(target, token, timeout=600, sticky=spread == "sticky") as c:
            sid = ""
            for _ in range(rounds):
                began = time.perf_counter()
                first = None
                try:
                    stream = c.chat_stream(PROMPT, session_id=sid, max_new_tokens=n_tokens, temperature=0.0)
                    for _delta in stream:
                        if first is None:
                            first = time.perf_counter() - began
                    assert stream.result is not None
                    sid = stream.result.session_id
                    with lock:
                        ttft.append(first if first is not None else time.perf_counter() - began)
                        done_tokens[0] += stream.result.reply.usage.completion_tokens
                except Exception:
                    with lock:
                        errors[0] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {
        "tokens_per_s": done_tokens[0] / wall,
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p99": pct(ttft, 0.99),
        "errors": errors[0],
        "wall_s": wall,
    }


def register_version(registry_dir: Path, model_dir: Path) -> str:
    """A registry version with a negligible, untrained delta (see the module docstring)."""
    import torch
    from safetensors import safe_open

    from dmha.learning.editor import delta_name
    from dmha.learning.loading import save_delta
    from dmha.learning.online import registry_for
    from dmha.learning.plan import UpdatePlan

    registry = registry_for(registry_dir, model_dir, registry_dir, shared=True)
    name = delta_name(0)
    shape = None
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            if name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                shape = fh.get_slice(name).get_shape()
    assert shape is not None, f"{name} not in {model_dir}"
    staging = registry.new_staging()
    save_delta({name: torch.full(tuple(shape), 1e-6)}, staging / "delta.safetensors")
    return registry.commit(staging, "base", [], UpdatePlan(), {}).version_id


def serving(address: str, token: str) -> str:
    from dmha_client import DMHAClient

    with DMHAClient(address, token, timeout=120) as c:
        return c.chat("hi", max_new_tokens=1).reply.model_version


def propagation(addresses: list[str], admin: str, user: str, version: str, swaps: int) -> list[float]:
    """Seconds from an admin's promote/rollback returning to every replica serving it."""
    from dmha_client import DMHAClient

    times: list[float] = []
    with DMHAClient(addresses[0], admin, timeout=600) as c:
        for i in range(swaps * 2):
            target = version if i % 2 == 0 else "base"
            if target == version:
                c.promote_version(version)
            else:
                c.rollback("base")
            began = time.perf_counter()
            pending = set(addresses)
            while pending:
                pending = {a for a in pending if serving(a, user) != target}
                if time.perf_counter() - began > 600:
                    raise SystemExit(f"{target} did not reach {sorted(pending)} in 600 s")
                if pending:
                    time.sleep(0.1)
            times.append(time.perf_counter() - began)
            print(f"  swap to {target}: every replica serving after {times[-1]:.2f} s", flush=True)
    return times


def failover(addresses: list[str], token: str, victim: subprocess.Popen[str], seconds: float) -> dict[str, float]:
    """Chat in a loop over every replica; kill ``victim`` a third of the way in."""
    from dmha_client import DMHAClient, RetryPolicy

    answered: list[float] = []
    failed = 0
    with DMHAClient(addresses, token, timeout=120, retry=RetryPolicy(attempts=4, initial=0.2)) as c:
        began = time.perf_counter()
        killed_at = None
        while time.perf_counter() - began < seconds:
            if killed_at is None and time.perf_counter() - began > seconds / 3:
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = time.perf_counter()
            try:
                c.chat("ping", max_new_tokens=2)
                answered.append(time.perf_counter())
            except Exception:
                failed += 1
    assert killed_at is not None
    around = [t for t in answered if t >= killed_at]
    gap = (around[0] - max([t for t in answered if t < killed_at], default=killed_at)) if around else float("inf")
    gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
    return {"failed_calls": failed, "gap_around_kill_s": gap, "median_gap_s": statistics.median(gaps) if gaps else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    parser.add_argument("--rounds", type=int, default=2, help="replies per client per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens per reply")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of 1 replica vs all")
    parser.add_argument(
        "--spread",
        choices=["even", "sdk", "sticky"],
        default="even",
        help="how clients are put on replicas (see throughput)",
    )
    parser.add_argument("--swaps", type=int, default=3, help="promote+rollback pairs timed")
    parser.add_argument("--failover-seconds", type=float, default=30.0)
    parser.add_argument("--model", type=Path, help="model folder (default: the converted default model)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model

    model_dir = args.model or ensure_model(None, default_data_dir())
    root = Path(tempfile.mkdtemp(prefix="dmha-scale-bench-"))
    redis_proc, url = start_redis(root)
    data_dir, registry_dir = root / "data", root / "registry"
    env = {
        **os.environ,
        "REDIS_URL": url,
        "DMHA_DATA_DIR": str(data_dir),
        "DMHA_LEARNING__REGISTRY_DIR": str(registry_dir),
        "DMHA_LEARNING__LIVE_POLL_SECONDS": "2",
        "DMHA_MODEL__PATH": str(model_dir),
        "DMHA_MODEL__THREADS": "1",
        "DMHA_SERVER__METRICS_PORT": "0",
        "DMHA_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "DMHA_MEMORY__LONGTERM__ENABLED": "false",
        "DMHA_LOGGING__LEVEL": "ERROR",
    }
    replicas: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for i in range(args.replicas):
            replicas.append(start_replica(env))
            print(f"replica {i + 1} ready on {replicas[-1][1]}", flush=True)
        addresses = [a for _, a in replicas]
        users = [mint(data_dir, f"u{i}") for i in range(args.clients)]
        for a in addresses:  # warm-up, not measured
            throughput([a], users[:1], 1, 4)

        runs: dict[str, list[dict[str, float]]] = {"1": [], str(args.replicas): []}
        for rep in range(args.repeats):
            for layout in ("1", str(args.replicas)):
                chosen = addresses[:1] if layout == "1" else addresses
                r = throughput(chosen, users, args.rounds, args.tokens, args.spread)
                runs[layout].append(r)
                print(
                    f"repeat {rep + 1}, {layout} replica(s): {r['tokens_per_s']:.1f} tok/s, "
                    f"TTFT p50 {r['ttft_p50']:.2f} s p99 {r['ttft_p99']:.2f} s, errors {r['errors']}",
                    flush=True,
                )
        one = statistics.median(r["tokens_per_s"] for r in runs["1"])
        many = statistics.median(r["tokens_per_s"] for r in runs[str(args.replicas)])

        version = register_version(registry_dir, model_dir)
        admin, user = mint(data_dir, "root", "admin"), users[0]
        swaps = propagation(addresses, admin, user, version, args.swaps)

        fo = failover(addresses, user, replicas[-1][0], args.failover_seconds)
        figures: dict[str, Any] = {
            "machine": f"{os.cpu_count()} CPU cores, CPU only, torch threads 1 per replica",
            "replicas": args.replicas,
            "clients": args.clients,
            "tokens_per_reply": args.tokens,
            "spread": args.spread,
            "throughput_1_tok_s": round(one, 2),
            f"throughput_{args.replicas}_tok_s": round(many, 2),
            "throughput_ratio": round(many / one, 2),
            "ttft_p50_1": round(statistics.median(r["ttft_p50"] for r in runs["1"]), 2),
            "ttft_p99_1": round(statistics.median(r["ttft_p99"] for r in runs["1"]), 2),
            f"ttft_p50_{args.replicas}": round(statistics.median(r["ttft_p50"] for r in runs[str(args.replicas)]), 2),
            f"ttft_p99_{args.replicas}": round(statistics.median(r["ttft_p99"] for r in runs[str(args.replicas)]), 2),
            "errors": sum(r["errors"] for rs in runs.values() for r in rs),
            "swap_propagation_p50_s": round(statistics.median(swaps), 2),
            "swap_propagation_max_s": round(max(swaps), 2),
            "failover": {k: round(v, 2) for k, v in fo.items()},
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        for proc, _ in replicas:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in replicas:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
