"""Serving benchmark: gRPC streams vs the same model's raw generate, in one run.

Starts ``dmha serve`` (real model, embedded Redis) as a subprocess, then measures
time-to-first-token (TTFT) and tokens/s per stream for 1, 4 and 16 concurrent
streams through the SDK, and the raw in-process greedy decode of the same model
with the same prompt. Prints a table and one final JSON line.

    python bench/serve.py [--streams 1 4 16] [--tokens 64] [--repeats 3]
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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class RawGenerate:
    """Greedy decode with plain transformers in this process (the baseline)."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dmha.config import ModelConfig

        torch.set_num_threads(1)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        messages = [
            {"role": "system", "content": ModelConfig().system_prompt},
            {"role": "user", "content": PROMPT},
        ]
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        self.ids = self.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def run(self, tokens: int) -> dict[str, float]:
        """One greedy decode of ``tokens`` tokens; TTFT and decode tokens/s."""
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(self.ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter()
            for _ in range(tokens - 1):
                out = self.model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            end = time.perf_counter()
        return {"ttft_s": first - start, "tok_s": (tokens - 1) / (end - first)}


async def one_stream(address: str, token: str, tokens: int) -> dict[str, float]:
    from dmha_client import AsyncDMHAClient

    async with AsyncDMHAClient(address, token, timeout=600) as client:
        start = time.perf_counter()
        first = None
        stream = client.chat_stream(PROMPT, max_new_tokens=tokens)
        async for _ in stream:
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
    n = stream.result.reply.usage.completion_tokens
    first = first or end
    return {"ttft_s": first - start, "tok_s": (n - 1) / max(end - first, 1e-9), "tokens": n, "end": end, "start": start}


async def concurrent(address: str, token: str, streams: int, tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream(address, token, tokens) for _ in range(streams)))
    wall = max(r["end"] for r in results) - t0
    return {
        "streams": streams,
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in results),
        "ttft_max_s": max(r["ttft_s"] for r in results),
        "per_stream_tok_s": statistics.median(r["tok_s"] for r in results),
        "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
    }


def start_server(data_dir: str, model_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    dmha = str(Path(sys.executable).with_name("dmha"))
    env = {
        **os.environ,
        "DMHA_DATA_DIR": data_dir,
        "DMHA_MODEL__PATH": str(model_dir),
        "DMHA_MODEL__THREADS": "1",
        "DMHA_SERVER__METRICS_PORT": "0",
        "DMHA_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "DMHA_LOGGING__LEVEL": "WARNING",
    }
    proc = subprocess.Popen([dmha, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if m := re.match(r"DMHA ready on (\S+)", line):
            token = subprocess.run(
                [dmha, "token", "--user", "bench"], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
            return proc, m.group(1), token
    raise SystemExit("server failed to start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens per reply")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the single-stream and raw cases")
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model

    model_dir = ensure_model(None, default_data_dir())
    baseline = RawGenerate(model_dir)
    raws: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, token = start_server(data_dir, model_dir)
        try:
            runs = []
            for n in args.streams:
                reps = []
                for _ in range(args.repeats if n == 1 else 1):
                    # Alternate baseline and server runs so both see the same machine load.
                    if n == 1:
                        raws.append(baseline.run(args.tokens))
                    reps.append(asyncio.run(concurrent(address, token, n, args.tokens)))
                runs.append({**{k: statistics.median(r[k] for r in reps) for k in reps[0]}, "streams": n})
            raw = {k: statistics.median(r[k] for r in raws) for k in ("ttft_s", "tok_s")}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    single = next((r for r in runs if r["streams"] == 1), runs[0])
    print(f"raw generate: TTFT {raw['ttft_s'] * 1000:.0f} ms, {raw['tok_s']:.1f} tok/s")
    print(f"{'streams':>8} {'TTFT p50':>10} {'TTFT max':>10} {'tok/s/stream':>13} {'aggregate':>10}")
    for r in runs:
        print(
            f"{r['streams']:>8} {r['ttft_p50_s'] * 1000:>8.0f}ms {r['ttft_max_s'] * 1000:>8.0f}ms "
            f"{r['per_stream_tok_s']:>13.1f} {r['aggregate_tok_s']:>10.1f}"
        )
    summary = {
        "bench": "serve",
        "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
        "tokens": args.tokens,
        "raw": raw,
        "grpc": runs,
        "overhead_tok_s_1_stream": 1 - single["per_stream_tok_s"] / raw["tok_s"],
        "ttft_ratio_1_stream": single["ttft_p50_s"] / raw["ttft_s"],
        "aggregate_vs_single": {str(r["streams"]): r["aggregate_tok_s"] / single["aggregate_tok_s"] for r in runs},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
