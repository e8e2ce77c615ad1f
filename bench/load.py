"""Load under attack (issue 11): well-behaved streaming clients, with and without one
hostile client running every attack of the issue in a loop.

Starts ``dmha serve`` as a subprocess (real model, embedded Redis, Milvus Lite,
default limits; ``--rate-limit 0`` lifts the per-user rate limit, so the hostile
client is held back only by the other defences; learning off, so no training
competes for the cores). A warm-up round (not measured) loads the embedder and
the caches first.
For each N, N clients (distinct users) each stream chat replies of ``--tokens``
tokens, enough rounds that every N gives at least ``--samples`` replies (a p99 of 8
replies would be their maximum: one slow moment, not a tail), once alone and once
beside the hostile client; which of the two runs first alternates from one N to the
next, so both see the same machine load. Reports TTFT p50/p99 and error rate of the
well-behaved clients, the hostile client's statuses, and the server's RSS.

    python bench/load.py [--clients 4 16 32 64] [--tokens 16] [--samples 100] [--rate-limit N] [--without TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Tell me about lighthouses."
BAD = {"INTERNAL", "UNKNOWN", "UNIMPLEMENTED", "DATA_LOSS"}


def start_server(
    data_dir: str, model_dir: Path, rate_limit: int = 0
) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    dmha = str(Path(sys.executable).with_name("dmha"))
    env = {
        **os.environ,
        "DMHA_DATA_DIR": data_dir,
        "DMHA_MODEL__PATH": str(model_dir),
        "DMHA_MODEL__THREADS": "1",
        "DMHA_SERVER__METRICS_PORT": "0",
        "DMHA_LIMITS__RATE_LIMIT_PER_MINUTE": str(rate_limit),
        "DMHA_LEARNING__ENABLED": "false",
        "DMHA_LOGGING__LEVEL": "ERROR",
    }
    proc = subprocess.Popen([dmha, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"DMHA ready on (\S+)", line):
            return proc, m.group(1), env
    raise SystemExit("server failed to start")


def mint(data_dir: str, user: str, *roles: str) -> str:
    from dmha.config import AuthConfig
    from dmha.runtime import Authenticator, load_secrets

    secret, key = load_secrets(AuthConfig(), Path(data_dir))
    return Authenticator(AuthConfig(), secret, key).issue(user, roles or ("user",))[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def good_client(address: str, token: str, tokens: int, rounds: int, out: list[tuple[str, float]]) -> None:
    from dmha_client import AsyncDMHAClient, DMHAError, RetryPolicy

    async with AsyncDMHAClient(address, token, timeout=600, retry=RetryPolicy(attempts=1)) as client:
        session = ""
        for _ in range(rounds):
            start = time.perf_counter()
            first: float | None = None
            try:
                stream = client.chat_stream(PROMPT, session_id=session, max_new_tokens=tokens)
                async for _delta in stream:
                    first = first or time.perf_counter()
                session = stream.result.session_id
                out.append(("OK", (first or time.perf_counter()) - start))
            except DMHAError as exc:
                out.append((exc.status, float("nan")))


def _chain(n: int) -> str:
    lines = ["attr: r multi", "rule: if ?x.r = ?y and ?y.r = ?z then ?x.r = ?z"]
    return "\n".join(lines + [f"fact: n{i}.r = n{i + 1}" for i in range(n)])


async def hostile(
    address: str,
    token: str,
    stop: asyncio.Event,
    seen: Counter[str],
    spent: Counter[str],
    without: tuple[str, ...] = (),
) -> None:
    """Every attack of issue 11, in a loop, until ``stop``."""
    import grpc

    from dmha_client import AsyncDMHAClient, DMHAError, RetryPolicy

    once = RetryPolicy(attempts=1)
    async with (
        AsyncDMHAClient(address, token, timeout=30, retry=once) as mallory,
        AsyncDMHAClient(address, "", timeout=30, retry=once) as anonymous,
        grpc.aio.insecure_channel(address) as channel,
    ):
        job = (await mallory.submit_feedback("Who am I?", "Mallory")).job_id  # a candidate: never ends

        async def watches() -> None:  # finding 1: many watches of a never-ending job
            async def watch() -> None:
                async for _ in mallory.watch_job(job):
                    pass

            tasks = [asyncio.create_task(watch()) for _ in range(8)]
            await asyncio.sleep(2.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        garbage = channel.unary_unary("/dmha.v1.SessionService/ListSessions")

        async def undecodable() -> None:  # finding 10
            await garbage(b"\xff\xff\xff\xff", metadata=(("authorization", f"Bearer {token}"),), timeout=10)

        body = " and ".join(f"?x{i}.r = ?x{i + 1}" for i in range(1000))
        attacks: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("watch_job x8", watches),
            ("temperature 1e-40", lambda: mallory.chat("hello", max_new_tokens=8, temperature=1e-40)),
            ("kb transitive chain 320", lambda: mallory.kb_tell(_chain(320))),
            ("kb 1000-condition rule", lambda: mallory.kb_tell(f"rule: if {body} then ?x0.s = ?x1000")),
            ("2 MiB message, no token", lambda: anonymous.chat("x" * (2 * 1024 * 1024), max_new_tokens=1)),
            ("control-character ids", lambda: mallory.memory_get("a\x01b")),
            ("20 KB echoed field", lambda: mallory.kb_tell("fact: a.b = c", scope="x" * 20_000)),
            ("undecodable bytes", undecodable),
            ("admin key guessing", lambda: anonymous.issue_token("guess", "root", ("admin",))),
        ]
        attacks = [(name, attack) for name, attack in attacks if not any(w in name for w in without)]
        while not stop.is_set():
            for name, attack in attacks:
                if stop.is_set():
                    break
                began = time.perf_counter()
                try:
                    await attack()
                    code = "OK"
                except DMHAError as exc:
                    code = exc.status
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                seen[f"{name}: {code}"] += 1
                spent[name] += time.perf_counter() - began


def hostile_process(address: str, token: str, without: tuple[str, ...]) -> None:
    """``--hostile``: run the attacks until SIGTERM, then print the counts as JSON."""
    import signal

    seen: Counter[str] = Counter()
    spent: Counter[str] = Counter()

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await hostile(address, token, stop, seen, spent, without)

    asyncio.run(go())
    print(json.dumps({"seen": seen, "spent": spent}), flush=True)


async def run(
    address: str,
    tokens: list[str],
    hostile_token: str | None,
    n_tokens: int,
    rounds: int,
    pid: int,
    without: tuple[str, ...] = (),
):
    results: list[tuple[str, float]] = []
    seen: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    stop = asyncio.Event()
    rss: list[float] = []

    async def sample() -> None:
        while not stop.is_set():
            rss.append(rss_mib(pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    # The attacker is a process of its own (as it would be on another machine), so
    # its work never delays this process's measurements.
    attacker = None
    if hostile_token:
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--hostile",
            address,
            hostile_token,
            *(f"--without={w}" for w in without),
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(3.0)  # the attacks are under way before the clients arrive
    start = time.perf_counter()
    await asyncio.gather(*(good_client(address, t, n_tokens, rounds, results) for t in tokens))
    wall = time.perf_counter() - start
    stop.set()
    if attacker:
        attacker.terminate()
        out, _ = await attacker.communicate()
        counts = json.loads(out.decode().strip().splitlines()[-1])
        seen.update(counts["seen"])
        spent.update(counts["spent"])
    await sampler
    ttfts = sorted(t for code, t in results if code == "OK")
    errors = Counter(code for code, _ in results if code != "OK")
    return {
        "requests": len(results),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan"),
        "wall_s": wall,
        "rss_max_mib": max(rss) if rss else 0.0,
        "rss_end_mib": rss[-1] if rss else 0.0,
        "hostile": dict(seen),
        "hostile_mean_s": {
            name: spent[name] / sum(n for k, n in seen.items() if k.startswith(f"{name}: ")) for name in spent
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 32, 64])
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens per reply")
    parser.add_argument("--rounds", type=int, default=2, help="replies per client, at least")
    parser.add_argument(
        "--samples", type=int, default=100, help="replies per N and run, at least (more rounds at small N)"
    )
    parser.add_argument("--model", type=Path, help="model folder (default: the converted default model)")
    parser.add_argument(
        "--rate-limit", type=int, help="requests per user per minute (default: the config's; 0 = no limit)"
    )
    parser.add_argument(
        "--without", action="append", default=[], metavar="TEXT", help="leave out attacks whose name contains TEXT"
    )
    parser.add_argument("--hostile", nargs=2, metavar=("ADDRESS", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile:
        hostile_process(*args.hostile, tuple(args.without))
        return

    from dmha.config import LimitsConfig, default_data_dir
    from dmha.llm.model_store import ensure_model

    model_dir = args.model or ensure_model(None, default_data_dir())
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        rate_limit = LimitsConfig().rate_limit_per_minute if args.rate_limit is None else args.rate_limit
        proc, address, _env = start_server(data_dir, model_dir, rate_limit)
        try:
            rss_start = rss_mib(proc.pid)
            mallory = mint(data_dir, "mallory")
            warm = [mint(data_dir, f"warm-{i}") for i in range(4)]
            asyncio.run(run(address, warm, mallory, args.tokens, 1, proc.pid))  # not measured
            for index, n in enumerate(args.clients):
                row: dict[str, Any] = {"clients": n}
                rounds = max(args.rounds, -(-args.samples // n))
                for mode in ("calm", "attacked") if index % 2 == 0 else ("attacked", "calm"):
                    users = [mint(data_dir, f"{mode}-{n}-{i}") for i in range(n)]
                    hostile_token = mallory if mode == "attacked" else None
                    row[mode] = asyncio.run(
                        run(address, users, hostile_token, args.tokens, rounds, proc.pid, tuple(args.without))
                    )
                    print(f"N={n} {mode}: {json.dumps(row[mode])}", flush=True)
                rows.append(row)
            alive = proc.poll() is None
            rss_end = rss_mib(proc.pid) if alive else 0.0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"\nserver RSS: {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end; alive after the run: {alive}")
    print(
        f"{'N':>4} {'replies':>8} {'TTFT p50 calm/attacked':>24} {'TTFT p99 calm/attacked':>24} "
        f"{'p99 ratio':>9} {'errors':>8}"
    )
    for r in rows:
        c, a = r["calm"], r["attacked"]
        print(
            f"{r['clients']:>4} {c['requests']:>8} {c['ttft_p50_s']:>10.2f}s/{a['ttft_p50_s']:>6.2f}s "
            f"{c['ttft_p99_s']:>14.2f}s/"
            f"{a['ttft_p99_s']:>6.2f}s {a['ttft_p99_s'] / c['ttft_p99_s']:>8.2f}x "
            f"{c['errors']:>3}/{a['errors']:<3}"
        )
    hostile_codes: Counter[str] = Counter()
    for r in rows:
        hostile_codes.update(r["attacked"]["hostile"])
    print("hostile client's statuses:", dict(sorted(hostile_codes.items())))
    for r in rows:
        means = ", ".join(f"{k} {v:.2f}s" for k, v in r["attacked"]["hostile_mean_s"].items())
        print(f"N={r['clients']} mean time per attack: {means}")
    bad = {k: v for k, v in hostile_codes.items() if k.rsplit(": ", 1)[1] in BAD}
    summary = {
        "bench": "load",
        "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
        "tokens": args.tokens,
        "samples": args.samples,
        "rate_limit_per_minute": rate_limit,
        "rows": rows,
        "server_alive": alive,
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "hostile_bad_statuses": bad,
        "p99_ratio": {str(r["clients"]): r["attacked"]["ttft_p99_s"] / r["calm"]["ttft_p99_s"] for r in rows},
        "good_client_errors": {str(r["clients"]): [r["calm"]["errors"], r["attacked"]["errors"]] for r in rows},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
