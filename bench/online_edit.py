"""Online-learning benchmark: corrections taught through the real server, probed through chat.

Fictitious facts come from a seeded template generator (made-up names the model
cannot know; nothing in the learning code knows these templates), shared with
``dmha report --reproduce`` (:mod:`dmha.report.reproducibility`). Against a fresh
``dmha serve`` with the real default model and the default learning config:

1. records the base model's greedy chat answers to a probe set of ordinary prompts
   (disjoint from the gate's and the training retain prompts);
2. teaches the facts one after another as a trainer (each update edits the previous
   live version) and records each job's state, gate metrics and Submit -> live time;
3. right after each deployed update, asks the fact and two held-out paraphrases in a
   fresh session (chat-level one-shot efficacy and generalisation);
4. at each checkpoint (``--checkpoints``) re-asks every earlier deployed fact
   (retained efficacy) and the probe set (chat-level locality against base:
   32-token greedy identity, and token agreement), and reads the server's resident
   memory (now and peak);
5. compares frozen and eager decode speed of the final version at 1 and 8 streams
   through the serving batcher (``bench/frozen_decode.py``), and reports the bytes
   each version stores.

Prints a line per update and one final JSON line.

    python bench/online_edit.py [--facts 200] [--seed 0] [--checkpoints 50,200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

# One generator and one server launcher, shared with `dmha report --reproduce`.
from dmha.report.reproducibility import knows, make_facts
from dmha_server.reproduce import start_server

PROBES = [
    "What is the capital of France?",
    "How many legs does an insect have?",
    "What is 7 times 8?",
    "Name a primary colour.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "Translate 'hello' into Spanish.",
    "What gas do plants absorb from the air?",
    "Give me a synonym for big.",
    "What is the opposite of cold?",
    "How many days are in a week?",
    "What is the chemical symbol for silver?",
    "What do cows drink?",
    "What is the square root of 64?",
    "Which ocean lies between Africa and Australia?",
    "Write a sentence about the rain.",
    "Who painted The Starry Night?",
    "What is the main language spoken in Argentina?",
    "How do I make toast?",
]


async def ask(client: Any, prompt: str, tokens: int = 32) -> str:
    """A fresh session's greedy answer."""
    return (await client.chat(prompt, max_new_tokens=tokens)).text


async def locality(client: Any, base: dict[str, str]) -> dict[str, float]:
    same = agree = total = 0
    for p, before in base.items():
        now = (await ask(client, p)).split()
        old = before.split()
        same += now[:32] == old[:32]
        agree += sum(a == b for a, b in zip(now, old, strict=False))
        total += max(len(now), len(old))
    return {"strict": same / len(base), "word_agreement": agree / max(1, total)}


def server_memory(pid: int) -> dict[str, float]:
    """The server process's resident size now and at its peak, GiB (Linux /proc)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return {}
    names = {"rss_gib": "VmRSS", "peak_gib": "VmHWM"}
    return {k: int(fields[f].split()[0]) / 2**20 for k, f in names.items() if f in fields}


async def run_server_part(
    address: str, token: str, facts: list[dict[str, str]], checkpoints: list[int], pid: int = 0
) -> dict:
    from dmha.learning.paraphrase import paraphrases
    from dmha_client import AsyncDMHAClient

    async with AsyncDMHAClient(address, token, timeout=1800) as client:
        base = {p: await ask(client, p) for p in PROBES}
        jobs, live_s, deployed_facts, one_shot_chat, marks = [], [], [], [], {}
        for i, fact in enumerate(facts, 1):
            t0 = time.perf_counter()
            resp = await client.submit_feedback(fact["input"], fact["target"])
            job = await client.wait_job(resp.job_id, timeout=1800)
            elapsed = time.perf_counter() - t0
            m = dict(job.metrics)
            jobs.append({"state": job.state, "metrics": m, "message": job.message})
            line = f"  update {i}/{len(facts)}: {job.state} in {elapsed:.0f}s"
            if job.state == "deployed":
                live_s.append(elapsed)
                deployed_facts.append(fact)
                eff = knows(await ask(client, fact["input"]), fact)
                gen = [knows(await ask(client, p), fact) for p in paraphrases(fact["input"], "eval", limit=2)]
                one_shot_chat.append((eff, gen))
                line += f" (chat: efficacy {eff:d}, paraphrases {sum(gen)}/{len(gen)})"
            line += (
                f" gate: eff {m.get('efficacy', float('nan')):.2f} gen {m.get('generalisation', float('nan')):.2f}"
                f" loc {m.get('locality', float('nan')):.4f} kl {m.get('kl_mean', float('nan')):.4f}"
                f"/{m.get('kl_prompt_max', float('nan')):.3f}"
                f" gated layers {m.get('gated_layers', 0):.0f}"
                f" time: train {m.get('train_seconds', float('nan')):.1f}s"
                f" gate {m.get('gate_seconds', float('nan')):.1f}s"
                f" job {m.get('total_seconds', float('nan')):.1f}s {job.message}"
            )
            print(line, file=sys.stderr, flush=True)
            if i in checkpoints or i == len(facts):
                kept = [knows(await ask(client, f["input"]), f) for f in deployed_facts]
                marks[i] = {
                    "retained_efficacy": sum(kept) / max(1, len(kept)),
                    "deployed_so_far": len(kept),
                    **(await locality(client, base)),
                    "server_memory": server_memory(pid),
                }
                print(f"  checkpoint {i}: {marks[i]}", file=sys.stderr, flush=True)
        versions = await client.list_versions()

    def mean(key: str) -> float | None:
        vals = [j["metrics"][key] for j in jobs if key in j["metrics"]]
        return statistics.mean(vals) if vals else None

    deployed = [j for j in jobs if j["state"] == "deployed"]
    return {
        "deploy_rate": len(deployed) / len(jobs),
        "states": {s: sum(j["state"] == s for j in jobs) for s in ("deployed", "rejected", "failed")},
        "gate_one_shot": {
            k: mean(k)
            for k in (
                "efficacy",
                "generalisation",
                "locality",
                "locality_strict",
                "locality_token_agreement",
                "kl_mean",
                "kl_prompt_max",
                "gated_layers",
            )
        },
        "gated_share": (
            sum(j["metrics"].get("gated_layers", 0) > 0 for j in deployed) / len(deployed) if deployed else None
        ),
        "chat_one_shot": {
            "efficacy": statistics.mean(e for e, _ in one_shot_chat) if one_shot_chat else None,
            "generalisation": statistics.mean(x for _, g in one_shot_chat for x in g) if one_shot_chat else None,
        },
        "checkpoints": marks,
        "submit_to_live_p50_s": statistics.median(live_s) if live_s else None,
        "submit_to_live_p95_s": sorted(live_s)[max(0, round(0.95 * len(live_s)) - 1)] if live_s else None,
        "rejections": [j["message"] for j in jobs if j["state"] != "deployed"][:20],
        "versions": len(versions),
    }


def decode_speed(data_dir: str, model_dir: Path, tokens: int = 48, rounds: int = 3) -> dict:
    """Frozen vs eager decode of the live version at 1 and 8 streams through the batcher (bench/frozen_decode.py)."""
    import dataclasses

    import torch
    from frozen_decode import compare

    from dmha.config import ModelConfig
    from dmha.learning.freezing import freeze
    from dmha.learning.loading import load_live_handle
    from dmha.learning.online import registry_for

    torch.set_num_threads(1)
    handle = load_live_handle(registry_for(Path(data_dir), model_dir), ModelConfig(device="cpu", use_frozen=False))
    frozen = dataclasses.replace(handle, step_model=freeze(handle.torch_model, device="cpu"), kind="frozen")
    return compare(handle, frozen, [1, 8], tokens, rounds, one_by_one=False)


def stored_bytes(data_dir: str) -> dict[str, float]:
    from dmha.learning.registry import Registry

    reg = Registry(Path(data_dir) / "registry", Path(data_dir))
    sizes = [v.stored_bytes for v in reg.versions()[1:] if v.status == "accepted"]
    frozen = sum(f.stat().st_size for f in (Path(data_dir) / "registry" / "frozen").glob("*.pt"))
    return {"per_version_mean": statistics.mean(sizes) if sizes else 0.0, "frozen_cache_total": float(frozen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", default="50,200", help="updates after which to re-probe everything")
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.learning.online import learning_cache_dir
    from dmha.llm.model_store import ensure_model

    model_dir = ensure_model(None, default_data_dir())
    facts = make_facts(args.facts, args.seed)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, token = start_server(data_dir, model_dir, learning_cache_dir(default_data_dir()))
        try:
            server = asyncio.run(run_server_part(address, token, facts, checkpoints, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        speed = decode_speed(data_dir, model_dir)
        server["stored_bytes_per_version"] = stored_bytes(data_dir)
    print(
        json.dumps(
            {
                "bench": "online_edit",
                "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
                "facts": args.facts,
                "seed": args.seed,
                **server,
                "decode": speed,
                "wall_s": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
