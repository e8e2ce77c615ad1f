"""Regenerate the Python stubs from protos/dmha/v1/*.proto (run: make protos).

protoc names modules after the proto path (``dmha.v1.chat_pb2``), which would
collide with the core ``dmha`` package; the stubs therefore live in the
``dmha_proto`` package and their imports are rewritten to match. That package
lives in ``clients/`` because it ships with the client distribution (the server
gets it from the same folder).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "clients" / "dmha_proto" / "v1"


def main() -> int:
    """Compile every proto and install the rewritten stubs; returns the exit code."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "dmha" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *sources,
            ]
        )
        if rc != 0:
            return rc
        for old in OUT.glob("*_pb2*.py*"):
            old.unlink()
        OUT.mkdir(parents=True, exist_ok=True)
        for gen in sorted((Path(tmp) / "dmha" / "v1").iterdir()):
            text = re.sub(r"\bfrom dmha\.v1 import\b", "from dmha_proto.v1 import", gen.read_text())
            text = re.sub(r"\bimport dmha\.v1\.", "import dmha_proto.v1.", text)
            (OUT / gen.name).write_text(text)
    (OUT / "__init__.py").touch()  # kept when present: it carries the package docstring
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
