"""Freezing a version in a short-lived child process.

``torch.jit.freeze`` and ``optimize_for_inference`` keep native memory that nothing in
Python can release: ~0.55 GiB per freeze of the default model, measured with
``bench/freeze_memory.py`` (resident growth per round; the Python-reachable tensors stay
flat). A server that froze every deployed version in-process grew by that much per
update, so 200 updates needed >100 GiB. Here a child process rebuilds the version from
the base model folder and the version's stored delta (the same float32 sum the
candidate was built and gated with, so the weights are bitwise those), freezes and
verifies it, and writes the module; the server only loads the file, which keeps no
memory per version. The cost is the child's start (~5 s of imports, ~2 s of loading).

The child runs :func:`main`, started by :func:`freeze_version` only.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from dmha.errors import FreezeError
from dmha.learning.freezing import FrozenStepModel

__all__ = ["freeze_version", "main"]

log = logging.getLogger(__name__)

# Exit status of a child whose model could not be frozen (FreezeError), as opposed to
# one that crashed.
_REFUSED = 3
# A freeze of the default model takes ~10 s on one core; a child still running after
# this long is stuck (or starved) and is killed.
_TIMEOUT_S = 900.0
_STDERR_TAIL = 2000


def freeze_version(
    model_dir: Path,
    delta_path: Path | None,
    out: Path,
    dtype: torch.dtype,
    device: str = "auto",
    tolerance: float = 1e-3,
    timeout_s: float = _TIMEOUT_S,
) -> FrozenStepModel:
    """Freeze ``base + delta`` in a child process, write it to ``out`` and load it here.

    Args:
        model_dir: the base model folder.
        delta_path: the version's cumulative delta (safetensors); None = the base itself.
        out: where the frozen module is written (the caller's temporary name: it is
            removed by the caller on error); its folder is created when missing.
        dtype: the served parameter dtype (the candidate's).
        device: ``auto``, ``cpu`` or ``cuda`` (of the frozen module).
        tolerance: largest |logit| difference from eager accepted.
        timeout_s: the child is killed after this long.

    Returns:
        The verified frozen step model, loaded from ``out``.

    Raises:
        FreezeError: the child refused (unsupported model, failed verification),
            crashed, or ran past ``timeout_s``; or ``out`` is unreadable.
        OSError: ``out``'s folder cannot be created.
    """
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-c",
        # Not ``-m``: the package imports this module first, and runpy warns about that.
        "import sys; from dmha.learning.freeze_process import main; sys.exit(main())",
        "--model-dir",
        str(model_dir),
        "--out",
        str(out),
        "--dtype",
        str(dtype).removeprefix("torch."),
        "--device",
        device,
        "--tolerance",
        repr(tolerance),
        "--threads",
        str(torch.get_num_threads()),
        "--parent-pid",
        str(os.getpid()),
    ]
    if delta_path is not None:
        cmd += ["--delta", str(delta_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FreezeError(f"the freezing process ran past {timeout_s:.0f}s and was stopped") from exc
    except OSError as exc:
        raise FreezeError(f"cannot start the freezing process: {exc}") from exc
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        if proc.returncode == _REFUSED:
            raise FreezeError(f"freezing process refused: {lines[-1]}")
        # A crash: the traceback goes to the log, its last line (the exception) to the error.
        log.warning("freezing process failed (exit %d):\n%s", proc.returncode, "\n".join(lines)[-_STDERR_TAIL:])
        raise FreezeError(f"freezing process failed (exit {proc.returncode}): {lines[-1]}")
    step_model = FrozenStepModel.load(out, device)
    log.info("froze %s in a child process in %.1fs", delta_path or model_dir, time.monotonic() - started)
    return step_model


def _exit_with_parent(parent_pid: int) -> None:
    """End this process when its parent is gone (a stopped server leaves no freezer)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="dmha-parent-watch", daemon=True).start()


def _freeze(args: argparse.Namespace) -> None:
    from dmha.learning.editor import apply_delta
    from dmha.learning.freezing import freeze
    from dmha.learning.gated import dense_names
    from dmha.learning.loading import read_base_weights
    from dmha.llm.engine import load_causal_lm

    model = load_causal_lm(args.model_dir, getattr(torch, args.dtype), "cpu")
    if args.delta is not None:
        from safetensors.torch import load_file

        delta = load_file(str(args.delta))
        # From the base files in float32, as the worker builds the candidate: bitwise
        # the weights the gate evaluated.
        apply_delta(model, read_base_weights(args.model_dir, dense_names(delta)), delta)
    freeze(model, args.out, args.device, args.tolerance)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child: rebuild, freeze, verify and write one version.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 when written, 3 when the model cannot be frozen (the reason on stderr).
    """
    parser = argparse.ArgumentParser(description="Freeze one model version (run by the DMHA server).")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--delta", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), required=True)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its stderr is read for the reason of a failure
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    torch.set_num_threads(max(1, args.threads))
    try:
        _freeze(args)
    except FreezeError as exc:
        print(exc, file=sys.stderr)
        return _REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
