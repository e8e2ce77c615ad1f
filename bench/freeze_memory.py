"""Memory kept by each TorchScript freeze of the default model (issue 8: memory per version).

Freezes copies of the base model (weights marked as an edited candidate's are) a few
times in one process, dropping each result, and prints the process's resident memory
after each round (glibc's free lists handed back first) together with the tensor memory
Python can still reach. Stages: ``trace`` (trace only), ``freeze`` (``torch.jit.freeze``
as well), ``serve`` (what the server does: :func:`dmha.learning.freezing.freeze`, i.e.
trace, freeze, optimise, round trip through bytes, prepare for serving, verify),
``child`` (what the server does since: the same in a child process, and only the
written module loaded and prepared here: :mod:`dmha.learning.freeze_process`).

    python bench/freeze_memory.py [--rounds 3] [--stages trace,freeze,serve,child]

Prints a line per round and one final JSON line: per stage, resident growth per round
after the first (GiB).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def resident_gib() -> float:
    """This process's resident memory after handing free heap back (Linux)."""
    from dmha.process_resources import trim

    gc.collect()
    trim()
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
    return kib / 2**20


def one_round(base, stage: str) -> None:
    import torch

    from dmha.learning import freezing
    from dmha.learning.steps import LlamaStepCore, jit_quietly, onednn_available

    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)  # as an edited candidate's weights are
    if stage == "serve":
        freezing.freeze(model, device="cpu")
        return
    if stage == "child":
        import tempfile
        from pathlib import Path

        from dmha.config import default_data_dir
        from dmha.learning.freeze_process import freeze_version
        from dmha.llm.model_store import ensure_model

        with tempfile.TemporaryDirectory() as tmp:
            freeze_version(ensure_model(None, default_data_dir()), None, Path(tmp) / "v.pt", torch.float32, "cpu")
        return
    core = LlamaStepCore(model, onednn=onednn_available(torch.device("cpu"), torch.float32)).eval()
    ids = torch.randint(0, 1000, (1, 16))
    with jit_quietly(), torch.no_grad():
        _, past = core(ids)
        traced = torch.jit.trace_module(core, {"forward": (ids,), "decode": (ids[:, :1], past)}, check_trace=False)
        if stage == "freeze":
            torch.jit.freeze(traced, preserved_attrs=["decode"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", default="trace,freeze,serve,child")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from dmha.config import default_data_dir
    from dmha.llm.model_store import ensure_model
    from dmha.process_resources import reachable_tensor_bytes

    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(str(ensure_model(None, default_data_dir()))).eval()
    growth = {}
    for stage in args.stages.split(","):
        rss = []
        for i in range(args.rounds):
            one_round(base, stage)
            rss.append(resident_gib())
            tensors = reachable_tensor_bytes() / 2**30
            print(f"{stage} round {i + 1}: resident {rss[-1]:.2f} GiB, tensors {tensors:.2f} GiB", flush=True)
        # The first round also pays one-off costs (kernels, caches): growth is measured after it.
        growth[stage] = (rss[-1] - rss[0]) / max(1, len(rss) - 1)
    print(
        json.dumps(
            {
                "bench": "freeze_memory",
                "machine": f"{os.cpu_count()} cores, CPU, torch threads 1",
                "resident_growth_gib_per_round": growth,
            }
        )
    )


if __name__ == "__main__":
    main()
