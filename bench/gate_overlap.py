"""Where the gates of a version's key-gated edits open: on their own facts, on each other's, on chat.

Reads a server's registry (``--data-dir``: the ``DMHA_DATA_DIR`` of a server, e.g. one
``bench/online_edit.py`` started), takes a version (default: the live one) and runs
every feedback item its lineage learned, plus the online benchmark's probe prompts
(ordinary questions, with the model's own greedy answers), through the version's
served weights. Per edit layer it counts the feedback tokens on which no edit, one
edit, or several edits act (several = the edits' changes add up on that token, the
interference a joint re-solve of the edits would remove), and the probe tokens on
which any edit acts (each such token can move an unrelated answer). Prints one JSON
line.

    python bench/gate_overlap.py --data-dir DIR [--version v000123]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's data folder")
    parser.add_argument("--version", default=None, help="default: the live version")
    args = parser.parse_args()

    import torch
    from online_edit import PROBES
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dmha.config import ModelConfig
    from dmha.learning import ChatFormat
    from dmha.learning.adapters import apply_delta
    from dmha.learning.gated import GatedEdits, opens
    from dmha.learning.generation import greedy
    from dmha.learning.loading import load_delta
    from dmha.learning.nullspace import collect_keys
    from dmha.learning.registry import Registry
    from dmha.llm.model_store import default_model_dir

    torch.set_num_threads(1)
    folder = Path(default_model_dir(args.data_dir))
    if not folder.exists():
        from dmha.config import default_data_dir

        folder = Path(default_model_dir(default_data_dir()))
    # shared: a running server owns the folder; a private open would clear its staging.
    registry = Registry(args.data_dir / "registry", folder, shared=True)
    version = registry.get(args.version) if args.version else registry.live()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fmt = ChatFormat(tokenizer, ModelConfig().system_prompt)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    answers = greedy(model, [fmt.prompt(p) for p in PROBES], 32, fmt.eos_ids)
    probe_seqs = [fmt.sequence(p, fmt.decode(a)) for p, a in zip(PROBES, answers, strict=True)]
    apply_delta(model, base, load_delta(version))
    items = registry.feedback_history(version.version_id)
    fact_seqs = [fmt.sequence(it.input, it.target) for it in items]
    layers = {
        int(name.split(".")[2]): module for name, module in model.named_modules() if isinstance(module, GatedEdits)
    }
    skip = len(fmt.shared_prefix())
    facts = collect_keys(model, fact_seqs, sorted(layers), skip=skip)
    probes = collect_keys(model, probe_seqs, sorted(layers), skip=skip)

    def acting(module: GatedEdits, keys: torch.Tensor) -> torch.Tensor:
        x = keys.float()
        energy = (x @ module.gate).square() @ module.gate_map
        return opens(energy, x, module.thresholds).sum(-1)

    def share(mask: torch.Tensor) -> float:
        return round(float(mask.float().mean()), 4) if len(mask) else 0.0

    out: dict[str, dict[str, float]] = {}
    for layer, module in sorted(layers.items()):
        n = acting(module, facts[layer])
        p = acting(module, probes[layer])
        out[str(layer)] = {
            "edits": module.edits,
            "feedback_tokens": len(n),
            "share_no_edit": share(n == 0),
            "share_one_edit": share(n == 1),
            "share_several": share(n >= 2),
            "most_on_one_token": int(n.max()) if len(n) else 0,
            "probe_tokens": len(p),
            "probe_share_acted_on": share(p > 0),
        }
    print(json.dumps({"version": version.version_id, "facts": len(items), "layers": out}))


if __name__ == "__main__":
    main()
