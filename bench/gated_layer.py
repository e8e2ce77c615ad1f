"""What key-gated edits cost a served token, as they pile up: one ``down_proj`` of the default model.

Stacks ``E`` synthetic edits (random orthonormal gates of 8 directions, rank 8, read
factors inside the gate as the editor's are) in front of a 1536 -> 576 linear (the
default model's ``down_proj``) and times one decode token (batch 1) and one 64-token
prefill through it, in the compact form served now (:func:`dmha.learning.gated.compact_write`)
and in the general form (``a`` then ``b``), in the same run. Prints one line per ``E``
and one final JSON line; ratios are the figures to compare across machines.

    python bench/gated_layer.py [--edits 0,8,50,200] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", default="0,8,50,200")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()

    import torch
    from torch import nn

    from dmha.learning.gated import GatedEdits, append_edit, gated_layers

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(1536, 576, bias=False)

    def timed(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
        with torch.no_grad():
            for _ in range(10):
                module(x)
            t = time.perf_counter()
            for _ in range(repeats):
                module(x)
        return (time.perf_counter() - t) / repeats * 1e3

    rows = []
    for edits in (int(e) for e in args.edits.split(",")):
        delta: dict[str, torch.Tensor] = {}
        for _ in range(edits):
            gate, _ = torch.linalg.qr(torch.randn(1536, 8, generator=g))
            a = torch.randn(8, 8, generator=g) @ gate.T
            append_edit(delta, 0, gate, 0.5, a, 0.01 * torch.randn(576, 8, generator=g))
        forms: dict[str, nn.Module] = {"layer": base}
        if edits:
            fields = next(iter(gated_layers(delta).values()))
            compact, general = GatedEdits(base, fields), GatedEdits(base, fields)
            general.compact = False
            forms = {"compact": compact, "general": general}
        row: dict[str, float] = {"edits": edits}
        for name, module in forms.items():
            row[f"{name}_decode_ms"] = timed(module, torch.randn(1, 1, 1536, generator=g), args.repeats)
            row[f"{name}_prefill_ms"] = timed(module, torch.randn(1, 64, 1536, generator=g), max(1, args.repeats // 10))
        rows.append(row)
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    layer = rows[0].get("layer_decode_ms") if rows and rows[0]["edits"] == 0 else None
    for row in rows:
        if row["edits"]:
            row["general_over_compact_decode"] = row["general_decode_ms"] / row["compact_decode_ms"]
            if layer:
                row["compact_over_layer_decode"] = row["compact_decode_ms"] / layer
    print(json.dumps({"rows": [{k: round(v, 4) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
