"""Gateway overhead: streamed chat through the HTTP gateway vs direct gRPC, in one run.

Starts ``dmha serve`` (real model, embedded Redis and Milvus Lite) and ``dmha gateway``
in front of it, both as subprocesses. For 1 and 8 concurrent streams it measures
time to first token (TTFT) and decode tokens/s per stream, alternating direct gRPC
(the asyncio SDK over one warm channel) and the gateway (``POST /v1/chat/completions``
with ``stream: true``, read by a minimal HTTP/1.1 SSE reader so that client-side JSON
parsing costs as little as the SDK's protobuf parsing) in ABBA order, so both see the
same machine load. The HTTP connections are kept alive between requests, as the
OpenAI clients keep theirs (``--new-connections``: one per request, handshake
included). Prints a table and one final JSON line.

    python bench/gateway.py [--streams 1 8] [--tokens 64] [--repeats 4] [--new-connections]

It also reports the CPU time the gateway process uses per streamed token next to the
server's: a figure the machine's load hardly moves, unlike wall-clock ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from serve import PROMPT, start_server

os.environ.setdefault("OMP_NUM_THREADS", "1")


class ConnectionPool:
    """Kept-alive HTTP/1.1 connections to the gateway, as an OpenAI client (httpx) keeps them.

    ``fresh=True`` opens a new connection per request and closes it after (``Connection:
    close``): the cost of a client that keeps none, TCP handshake included.
    """

    def __init__(self, url: str, fresh: bool = False) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.netloc = parts.hostname, parts.port, parts.netloc
        self.fresh = fresh
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle and not self.fresh:
            reader, writer = self.idle.pop()
            # The gateway closes a connection idle for 5 s (uvicorn's keep-alive timeout,
            # also httpx's expiry): like httpx, open a new one then.
            if not (reader.at_eof() or writer.is_closing()):
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], reusable: bool) -> None:
        if reusable and not self.fresh:
            self.idle.append(conn)
        else:
            conn[1].close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def sse_events(pool: ConnectionPool, path: str, token: str, body: dict) -> AsyncIterator[dict]:
    """POST ``body`` and yield the SSE ``data`` objects (HTTP/1.1, chunked, a pooled connection)."""
    reader, writer = conn = await pool.take()
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {pool.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"{'Connection: close' if pool.fresh else 'Connection: keep-alive'}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    complete = False
    try:
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if status != 200:
            raise SystemExit(f"gateway answered {status}: {(await reader.read(4096))[:500]!r}")
        if headers.get("transfer-encoding") != "chunked":
            raise SystemExit(f"expected a chunked SSE response, got headers {headers}")
        buffer = b""
        # Read to the last chunk, so that the connection is clean for the next request.
        while size := int((await reader.readline()).strip(), 16):
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                text = event.removeprefix(b"data: ")
                if text != b"[DONE]":
                    yield json.loads(text)
        await reader.readexactly(2)
        complete = headers.get("connection", "").lower() != "close"
    finally:
        pool.give_back(conn, complete)


async def via_gateway(pool: ConnectionPool, token: str, tokens: int) -> dict[str, float]:
    body = {
        "model": "dmha",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
    }
    start = time.perf_counter()
    first = None
    n = 0
    async for chunk in sse_events(pool, "/v1/chat/completions", token, body):
        if chunk.get("usage"):
            n = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - start, "tok_s": (n - 1) / max(end - first, 1e-9), "tokens": n, "end": end}


async def via_grpc(client, tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    stream = client.chat_stream(PROMPT, max_new_tokens=tokens)
    async for delta in stream:
        if delta and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    n = stream.result.reply.usage.completion_tokens
    first = first or end
    return {"ttft_s": first - start, "tok_s": (n - 1) / max(end - first, 1e-9), "tokens": n, "end": end}


async def concurrent(make, streams: int) -> dict[str, float]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(make() for _ in range(streams)))
    wall = max(r["end"] for r in results) - t0
    return {
        "tokens": sum(r["tokens"] for r in results),
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in results),
        "per_stream_tok_s": statistics.median(r["tok_s"] for r in results),
        "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
    }


def start_gateway(address: str) -> tuple[subprocess.Popen[str], str]:
    dmha = str(Path(sys.executable).with_name("dmha"))
    proc = subprocess.Popen(
        [dmha, "gateway", "--port", "0", "--address", address, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.match(r"DMHA gateway on (\S+)", line):
            return proc, m.group(1)
    raise SystemExit("gateway failed to start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    address: str,
    pool: ConnectionPool,
    token: str,
    streams: list[int],
    tokens: int,
    repeats: int,
    pids: dict[str, int],
) -> tuple[dict[str, dict[int, list[dict[str, float]]]], dict[str, float]]:
    """Each repeat's figures per path and stream count (aligned by repeat), and CPU
    seconds used per streamed token.

    CPU time is what the gateway costs on a loaded machine, whatever the load: on
    2 cores every CPU second it uses is one the model does not get.
    """
    from dmha_client import AsyncDMHAClient

    runs: dict[str, dict[int, list[dict[str, float]]]] = {"grpc": {}, "gateway": {}}
    cpu = {"gateway_during_gateway": 0.0, "server_during_grpc": 0.0, "server_during_gateway": 0.0}
    streamed = {"grpc": 0, "gateway": 0}
    async with AsyncDMHAClient(address, token, timeout=600) as client:
        await client.health()  # the channel is warm before the first measurement
        await via_grpc(client, 4)
        # As warm as the channel: one kept-alive connection per concurrent stream.
        await asyncio.gather(*(via_gateway(pool, token, 4) for _ in range(max(streams))))
        for rep in range(repeats):
            # ABBA: the path measured first alternates between repeats.
            order = ("grpc", "gateway") if rep % 2 == 0 else ("gateway", "grpc")
            for n in streams:
                for path in order:
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    if path == "grpc":
                        result = await concurrent(lambda: via_grpc(client, tokens), n)
                    else:
                        result = await concurrent(lambda: via_gateway(pool, token, tokens), n)
                    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                    streamed[path] += int(result["tokens"])
                    cpu[f"server_during_{path}"] += used["server"]
                    if path == "gateway":
                        cpu["gateway_during_gateway"] += used["gateway"]
                    runs[path].setdefault(n, []).append(result)
    pool.close()
    per_token = {
        "gateway_cpu_ms_per_token": 1000 * cpu["gateway_during_gateway"] / max(streamed["gateway"], 1),
        "server_cpu_ms_per_token_grpc": 1000 * cpu["server_during_grpc"] / max(streamed["grpc"], 1),
        "server_cpu_ms_per_token_gateway": 1000 * cpu["server_during_gateway"] / max(streamed["gateway"], 1),
    }
    return runs, per_token


def summarise(reps: list[dict[str, float]]) -> dict[str, float]:
    """Medians over repeats, and each figure's spread ((max - min) / median): the run's noise."""
    out = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    for k in list(out):
        values = [r[k] for r in reps]
        out[f"{k}_spread"] = (max(values) - min(values)) / out[k] if out[k] else 0.0
    return out


def paired(gateway: list[dict[str, float]], direct: list[dict[str, float]], key: str) -> dict[str, float]:
    """The gateway's cost on ``key`` from repeats paired in time: median of the per-repeat
    ratios, with a bootstrap 95 % interval of that median.

    Each ABBA repeat measures both paths back to back, so a ratio within a repeat cancels
    the machine's load at that moment, which moved the separate medians by 30-290 %.
    """
    ratios = [g[key] / d[key] for g, d in zip(gateway, direct, strict=True)]
    # Slower is positive for both figures: TTFT grows, tokens/s shrinks.
    costs = [r - 1 if key.startswith("ttft") else 1 - r for r in ratios]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(costs, k=len(costs))) for _ in range(2000))
    return {"median": statistics.median(costs), "ci95_low": medians[50], "ci95_high": medians[1949]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per reply")
    parser.add_argument("--repeats", type=int, default=4, help="ABBA repeats per stream count (medians reported)")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="a new HTTP connection per gateway request (default: kept-alive connections, as OpenAI clients keep)",
    )
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model

    model_dir = ensure_model(None, default_data_dir())
    with tempfile.TemporaryDirectory() as data_dir:
        server, address, token = start_server(data_dir, model_dir)
        gateway, url = start_gateway(address)
        try:
            pids = {"server": server.pid, "gateway": gateway.pid}
            pool = ConnectionPool(url, fresh=args.new_connections)
            runs, per_token = asyncio.run(measure(address, pool, token, args.streams, args.tokens, args.repeats, pids))
        finally:
            for proc in (gateway, server):
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    figures = {path: {n: summarise(reps) for n, reps in by_n.items()} for path, by_n in runs.items()}
    print(f"{'streams':>8} {'path':>8} {'TTFT p50':>10} {'tok/s/stream':>13} {'aggregate':>10}   spread over repeats")
    overhead = {}
    for n in args.streams:
        for path in ("grpc", "gateway"):
            r = figures[path][n]
            print(
                f"{n:>8} {path:>8} {r['ttft_p50_s'] * 1000:>8.0f}ms {r['per_stream_tok_s']:>13.2f} "
                f"{r['aggregate_tok_s']:>10.2f}   TTFT {r['ttft_p50_s_spread'] * 100:.0f} %, "
                f"tok/s {r['per_stream_tok_s_spread'] * 100:.0f} %"
            )
        g, d = figures["gateway"][n], figures["grpc"][n]
        overhead[str(n)] = {
            "ttft": g["ttft_p50_s"] / d["ttft_p50_s"] - 1,
            "tok_s": 1 - g["per_stream_tok_s"] / d["per_stream_tok_s"],
            "aggregate_tok_s": 1 - g["aggregate_tok_s"] / d["aggregate_tok_s"],
            "paired_ttft": paired(runs["gateway"][n], runs["grpc"][n], "ttft_p50_s"),
            "paired_tok_s": paired(runs["gateway"][n], runs["grpc"][n], "per_stream_tok_s"),
        }
    for n, o in overhead.items():
        print(
            f"overhead at {n} stream(s): TTFT {o['ttft'] * 100:+.1f} %, tok/s/stream {o['tok_s'] * 100:+.1f} %, "
            f"aggregate {o['aggregate_tok_s'] * 100:+.1f} %"
        )
        for key, label in (("paired_ttft", "TTFT"), ("paired_tok_s", "tok/s/stream")):
            p = o[key]
            print(
                f"  paired by repeat, {label}: median {p['median'] * 100:+.1f} % "
                f"(95 % interval {p['ci95_low'] * 100:+.1f} .. {p['ci95_high'] * 100:+.1f} %)"
            )
    share = per_token["gateway_cpu_ms_per_token"] / per_token["server_cpu_ms_per_token_grpc"]
    print(
        f"CPU per streamed token: gateway {per_token['gateway_cpu_ms_per_token']:.2f} ms, server "
        f"{per_token['server_cpu_ms_per_token_grpc']:.2f} ms (direct) / "
        f"{per_token['server_cpu_ms_per_token_gateway']:.2f} ms (via gateway); gateway/server {share * 100:.1f} %"
    )
    print(
        json.dumps(
            {
                "bench": "gateway",
                "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
                "tokens": args.tokens,
                "repeats": args.repeats,
                "http_connections": "new per request" if args.new_connections else "kept alive",
                "figures": {p: {str(n): r for n, r in by_n.items()} for p, by_n in figures.items()},
                "overhead": overhead,
                "cpu_per_token": per_token,
                "gateway_cpu_share": share,
            }
        )
    )


if __name__ == "__main__":
    main()
