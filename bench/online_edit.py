"""Online-learning benchmark through the real server and SDK.

Generates fictitious facts (made-up names the model cannot know), each with
held-out paraphrases, and a retain set of ordinary prompts. Then, against a fresh
``dmha serve`` with the real model and the default learning config:

1. records the base model's greedy answers to the retain set;
2. submits one feedback pair per fact, *sequentially* (each update trains from the
   previous live version, with replay), and records the gate's one-shot metrics
   and Submit -> live time of each;
3. after the last update re-probes every fact (efficacy on the trained input,
   generalisation on paraphrases) and the retain set (locality: first 32 tokens
   unchanged);
4. compares the frozen and eager decode speed of the final version in process;
5. measures the consistency monitor's detection precision/recall on answers that
   agree or disagree with a knowledge base of the same facts.

Prints a table and one final JSON line.

    python bench/online_edit.py [--facts 50] [--seed 0]
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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

RETAIN = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What is 7 times 8?",
    "Name a primary colour.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "Translate 'hello' into Spanish.",
    "What gas do plants absorb from the air?",
    "Give me a synonym for happy.",
    "What is the opposite of cold?",
    "How many days are in a week?",
    "What is the chemical symbol for gold?",
    "What do bees make?",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What is the freezing point of water in Fahrenheit?",
    "Who painted the Mona Lisa?",
    "What is the main language spoken in Brazil?",
    "How many continents are there?",
]

_SYL = ["zu", "brow", "ka", "vlo", "rn", "tes", "mir", "ak", "dor", "phe", "lin", "qua", "sel", "var", "osh", "tel",
        "nim", "bre", "ko", "ran", "vex", "ul", "tra", "zen", "fal", "gor", "ith", "mo", "pry", "sk"]
TEMPLATES = [
    ("What is the capital of {a}?", "The capital of {a} is {b}."),
    ("Who founded the company {a}?", "The company {a} was founded by {b}."),
    ("What is the national animal of {a}?", "The national animal of {a} is the {b}."),
    ("Who wrote the novel {a}?", "The novel {a} was written by {b}."),
    ("What language is spoken in {a}?", "The language spoken in {a} is {b}."),
]


def made_up(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def make_facts(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` fictitious facts with distinct made-up subjects and answers."""
    rng = random.Random(seed)
    seen: set[str] = set()
    facts = []
    while len(facts) < n:
        a, b = made_up(rng, 3), made_up(rng, 2)
        if a in seen or b in seen:
            continue
        seen |= {a, b}
        q, t = TEMPLATES[len(facts) % len(TEMPLATES)]
        facts.append({"input": q.format(a=a), "target": t.format(a=a, b=b), "key": b, "subject": a})
    return facts


def start_server(data_dir: str, model_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    dmha = str(Path(sys.executable).with_name("dmha"))
    env = {**os.environ, "DMHA_DATA_DIR": data_dir, "DMHA_MODEL__PATH": str(model_dir),
           "DMHA_MODEL__THREADS": "1", "DMHA_SERVER__METRICS_PORT": "0",
           "DMHA_LIMITS__RATE_LIMIT_PER_MINUTE": "0", "DMHA_LOGGING__LEVEL": "WARNING",
           "DMHA_MEMORY__LONGTERM__ENABLED": "false"}
    proc = subprocess.Popen([dmha, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if m := re.match(r"DMHA ready on (\S+)", line):
            token = subprocess.run([dmha, "token", "--user", "bench", "--role", "trainer", "--role", "admin"],
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()
            return proc, m.group(1), token
    raise SystemExit("server failed to start")


async def greedy(client, prompt: str, tokens: int = 32) -> tuple[str, str]:
    """(text, version) of a fresh-session greedy answer."""
    r = await client.chat(prompt, max_new_tokens=tokens)
    return r.text, r.reply.model_version


def first_tokens(text: str, n: int = 32) -> list[str]:
    return text.split()[:n]


async def run_server_part(address: str, token: str, facts: list[dict[str, str]]) -> dict:
    from dmha.learning.paraphrase import paraphrases
    from dmha_client import AsyncDMHAClient

    async with AsyncDMHAClient(address, token, timeout=900) as client:
        base = {p: (await greedy(client, p))[0] for p in RETAIN}
        one_shot, submit_to_live, states = [], [], []
        for i, fact in enumerate(facts, 1):
            t0 = time.perf_counter()
            resp = await client.submit_feedback(fact["input"], fact["target"])
            job = await client.wait_job(resp.job_id, timeout=900)
            states.append(job.state)
            if job.state == "deployed":
                submit_to_live.append(time.perf_counter() - t0)
            one_shot.append(dict(job.metrics))
            print(f"  update {i}/{len(facts)}: {job.state} in {time.perf_counter() - t0:.1f}s "
                  f"(efficacy {job.metrics.get('efficacy', float('nan')):.2f}, "
                  f"generalisation {job.metrics.get('generalisation', float('nan')):.2f}, "
                  f"locality {job.metrics.get('locality', float('nan')):.2f})", file=sys.stderr, flush=True)
        eff, gen = [], []
        for fact in facts:
            text, _ = await greedy(client, fact["input"])
            eff.append(fact["key"].lower() in text.lower())
            for para in paraphrases(fact["input"], "eval", limit=2):
                text, _ = await greedy(client, para)
                gen.append(fact["key"].lower() in text.lower())
        same = [first_tokens((await greedy(client, p))[0]) == first_tokens(base[p]) for p in RETAIN]
        versions = await client.list_versions()
    return {
        "deployed": states.count("deployed"),
        "rejected": states.count("rejected"),
        "failed": states.count("failed"),
        "one_shot": {k: statistics.mean(m[k] for m in one_shot if k in m)
                     for k in ("efficacy", "generalisation", "locality") if any(k in m for m in one_shot)},
        "final_efficacy": sum(eff) / len(eff),
        "final_generalisation": sum(gen) / max(1, len(gen)),
        "final_locality": sum(same) / len(same),
        "submit_to_live_median_s": statistics.median(submit_to_live) if submit_to_live else None,
        "live_version": next((v.id for v in versions if v.live), "?"),
    }


def decode_speed(data_dir: str, model_dir: Path, tokens: int = 64, rounds: int = 3) -> dict:
    """Frozen vs eager greedy decode of the live version, in this process."""
    import torch

    from dmha.config import ModelConfig
    from dmha.learning.freezing import freeze
    from dmha.learning.online import load_live_handle, registry_for
    from dmha.llm.eager import EagerStepModel

    torch.set_num_threads(1)
    handle = load_live_handle(registry_for(Path(data_dir), model_dir), ModelConfig(device="cpu", use_frozen=False))
    model = handle.torch_model
    frozen = freeze(model, device="cpu")
    eager = EagerStepModel(model)
    ids = torch.tensor([handle.tokenizer("Tell me a story about the sea.")["input_ids"]])

    def run(step) -> tuple[float, float]:
        t0 = time.perf_counter()
        logits, past = step.prefill(ids)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits, past = step.decode(logits.argmax(-1, keepdim=True).reshape(1, 1), past)
        return tokens / (time.perf_counter() - t0), prefill

    res = {"eager": [], "frozen": []}
    for _ in range(rounds):  # alternate so both see the same load
        res["eager"].append(run(eager))
        res["frozen"].append(run(frozen))
    out = {k: {"tok_s": max(r[0] for r in v), "prefill_ms": 1000 * min(r[1] for r in v)} for k, v in res.items()}
    out["frozen_vs_eager"] = out["frozen"]["tok_s"] / out["eager"]["tok_s"]
    return out


def monitor_detection(facts: list[dict[str, str]]) -> dict:
    """Monitor precision/recall on answers that agree / disagree with a KB of the facts."""
    from dmha.config import MetacognitionConfig
    from dmha.knowledge import KnowledgeBase
    from dmha.knowledge.claims import check_answer
    from dmha.knowledge.hook import claim_outcomes
    from dmha.llm.base import GenerationResult
    from dmha.metacognition.monitor import score_signals

    cfg = MetacognitionConfig()
    rng = random.Random(1)
    tp = fp = fn = tn = 0
    for fact in facts:
        kb = KnowledgeBase()
        subject = fact["subject"].lower()
        kb.tell(f"fact: {subject}.answer = {fact['key'].lower()}")
        wrong = made_up(rng, 2)
        for answer, inconsistent in ((f"{fact['subject']}'s answer is {fact['key']}.", False),
                                     (f"{fact['subject']}'s answer is {wrong}.", True)):
            claims = claim_outcomes(check_answer(kb, answer))
            score, _ = score_signals(cfg, claims, [], GenerationResult(answer, 0, 5, "stop", "b", mean_logprob=-0.5))
            fired = score >= cfg.threshold
            tp += fired and inconsistent
            fp += fired and not inconsistent
            fn += (not fired) and inconsistent
            tn += (not fired) and not inconsistent
    return {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "cases": tp + fp + fn + tn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model

    model_dir = ensure_model(None, default_data_dir())
    facts = make_facts(args.facts, args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, token = start_server(data_dir, model_dir)
        try:
            server = asyncio.run(run_server_part(address, token, facts))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        speed = decode_speed(data_dir, model_dir)
    monitor = monitor_detection(facts)
    print(f"facts: {args.facts}  deployed {server['deployed']}, rejected {server['rejected']}, failed {server['failed']}")
    print(f"one-shot (gate, right after each update): {server['one_shot']}")
    print(f"after all {args.facts} sequential updates: efficacy {server['final_efficacy']:.2f}, "
          f"generalisation {server['final_generalisation']:.2f}, locality {server['final_locality']:.2f}")
    print(f"Submit -> live median: {server['submit_to_live_median_s']}")
    print(f"decode: frozen {speed['frozen']['tok_s']:.1f} tok/s vs eager {speed['eager']['tok_s']:.1f} "
          f"({speed['frozen_vs_eager']:.2f}x); prefill frozen {speed['frozen']['prefill_ms']:.0f} ms vs eager "
          f"{speed['eager']['prefill_ms']:.0f} ms")
    print(f"monitor: precision {monitor['precision']:.2f}, recall {monitor['recall']:.2f} on {monitor['cases']} answers")
    print(json.dumps({"bench": "online_edit", "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
                      "facts": args.facts, **server, "decode": speed, "monitor": monitor,
                      "wall_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
