"""A scripted session on the real default model, then ``dmha report`` over it.

Starts ``dmha serve`` on a fresh data folder (default config: embedded Redis,
Milvus Lite, long-term memory, the knowledge base, the monitor and learning on),
has user ``alice`` tell statements (one conflicting) and chat about a few topics,
reclusters her memories, has a trainer teach one correction, stops the server and
writes the offline report. This is how the figures quoted in BENCHMARKS.md are made.

    python bench/report_demo.py --out report/ [--data-dir DIR] [--no-feedback]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

STATEMENTS = (
    "fact: bob.city = paris\n"
    "fact: bob.age = 30\n"
    "fact: bob.quiet = true\n"
    "fact: bob.cold = true\n"
    "rule: smart_rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true\n"
    "fact: alice.friend = bob\n"
    "fact: pepper.species = beagle\n"
    "fact: alice.pet = pepper"
)
CONFLICT = "fact: bob.age = 31  [confidence=0.5]"
MESSAGES = [
    "My beagle Pepper loves chasing the ball in the park.",
    "Pepper barked at the mailman again this morning.",
    "I walked Pepper along the river before work.",
    "Pepper chewed my slippers while I was out.",
    "The vet says Pepper the beagle needs more exercise.",
    "I baked a sourdough loaf with a crunchy crust today.",
    "My sourdough starter needs flour and water every day.",
    "I tried a rye sourdough recipe with sea salt.",
    "The second sourdough loaf came out much lighter.",
    "I gave a sourdough loaf to my neighbour.",
    "I am planning a trip to Lisbon in May.",
    "In Lisbon I want to ride the old yellow tram.",
    "I booked a hotel near the river in Lisbon.",
    "I should learn a few words of Portuguese before Lisbon.",
    "My flight to Lisbon leaves on a Tuesday morning.",
    "Bob lives in London, right?",
    "Where does my friend Bob live, and how old is he?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--data-dir", help="keep the server's state here (default: a temporary folder)")
    parser.add_argument("--no-feedback", action="store_true", help="skip the trained correction (saves ~4 min)")
    args = parser.parse_args()

    from dmha.config import default_data_dir
    from dmha.learning.online import learning_cache_dir
    from dmha.llm.model_store import ensure_model
    from dmha_client import DMHAClient
    from dmha_server.reproduce import start_server

    model_dir = ensure_model(None, default_data_dir())
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="dmha-report-demo-"))
    # A short working memory moves most of the conversation into long-term memory.
    env = {
        "DMHA_MEMORY__LONGTERM__ENABLED": "true",
        "DMHA_METACOGNITION__ENABLED": "true",
        "DMHA_MEMORY__WORKING__MAX_TURNS": "6",
        "DMHA_MEMORY__LONGTERM__ARCHIVE_BATCH": "4",
    }
    proc, address, trainer_token = start_server(data_dir, model_dir, learning_cache_dir(default_data_dir()), env)
    dmha = str(Path(sys.executable).with_name("dmha"))
    full_env = {**os.environ, "DMHA_DATA_DIR": str(data_dir)}
    token = subprocess.run(
        [dmha, "token", "--user", "alice"], env=full_env, capture_output=True, text=True, check=True
    ).stdout.strip()
    t0 = time.perf_counter()
    try:
        with DMHAClient(address, token, timeout=1800) as alice:
            alice.kb_tell(STATEMENTS)
            alice.kb_tell(CONFLICT)
            sid = ""
            for i, msg in enumerate(MESSAGES, 1):
                reply = alice.chat(msg, session_id=sid, max_new_tokens=48)
                sid = reply.session_id
                fired = [e.outcome for e in reply.reply.metacognition]
                print(f"  turn {i}: {reply.text[:70]!r} {fired or ''}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 120
            while alice.memory_stats().memories < len(MESSAGES) and time.monotonic() < deadline:
                time.sleep(1.0)  # archival runs in the background after each turn
            report = alice.memory_recluster()
            print(f"  memories: {report.memories}, clusters: {report.clusters}", file=sys.stderr, flush=True)
        if not args.no_feedback:
            with DMHAClient(address, trainer_token, timeout=1800) as trainer:
                job = trainer.submit_feedback("What is the capital of Zubrowka?", "The capital of Zubrowka is Vlorn.")
                done = trainer.wait_job(job.job_id, timeout=1800)
                print(f"  feedback: {done.state} {done.message}", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    print(f"  conversation took {time.perf_counter() - t0:.0f} s; writing the report", file=sys.stderr, flush=True)
    subprocess.run(
        [dmha, "report", "--data-dir", str(data_dir), "--user", "alice", "--out", args.out],
        env={**full_env, **env, "DMHA_MODEL__PATH": str(model_dir)},
        check=True,
    )


if __name__ == "__main__":
    main()
