"""Rebuild a registered version in memory: the base model plus the version's own delta."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmha.config import ModelConfig
from dmha.errors import ArtifactError, FreezeError, LearningError
from dmha.learning.editor import apply_delta
from dmha.learning.freeze_process import freeze_version
from dmha.learning.freezing import FrozenStepModel
from dmha.learning.gated import dense_names
from dmha.learning.registry import BASE_VERSION, Registry, Version
from dmha.learning.steps import EagerStepModel
from dmha.llm.base import ModelHandle, StepModel
from dmha.llm.engine import load_eager_handle

__all__ = ["LoadedVersion", "load_delta", "load_live_handle", "load_version", "read_base_weights", "save_delta"]

log = logging.getLogger(__name__)


def save_delta(delta: dict[str, torch.Tensor], path: Path) -> None:
    """Write a cumulative delta (name -> float32 matrix) as safetensors."""
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in delta.items()}, str(path))


def load_delta(version: Version) -> dict[str, torch.Tensor]:
    """The cumulative delta of a version (empty for base).

    Raises:
        ArtifactError: the delta file is missing or unreadable.
    """
    path = version.delta_path
    if version.version_id == BASE_VERSION or path is None:
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"version {version.version_id}: cannot read {path}: {exc}") from exc


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to serve.

    Attributes:
        version: the record actually loaded (an ancestor of the one asked for when
            that one was damaged).
        model: the eager model (what the next update trains from).
        delta: its cumulative delta from base.
        step_model: the frozen module when wanted and possible, else eager.
        kind: ``frozen`` or ``eager``.
    """

    version: Version
    model: Any
    delta: dict[str, torch.Tensor]
    step_model: StepModel
    kind: str


def load_version(
    registry: Registry,
    base_model: Any,
    version_id: str | None = None,
    device: str = "auto",
    use_frozen: bool = True,
    freeze_tolerance: float = 1e-3,
) -> LoadedVersion:
    """Load a version (default: the live one), falling back to intact ancestors.

    The frozen module comes from the registry's cache; when it is missing, unreadable
    or from an older format it is rebuilt (base + delta, frozen in a child process:
    :mod:`dmha.learning.freeze_process`) and cached again.

    Args:
        registry: the registry.
        base_model: the freshly loaded base model; it is modified in place (the
            delta is added), so pass one nobody else serves.
        version_id: which version; None = the live pointer's.
        device: device of the frozen module (``auto``/``cpu``/``cuda``).
        use_frozen: serve a frozen module (non-base versions only).
        freeze_tolerance: largest |logit| difference from eager accepted when freezing.

    Returns:
        The loaded version.

    Raises:
        NotFound: ``version_id`` does not exist.
        ArtifactError: not even the base model folder is usable.
    """
    version = registry.resolve(version_id or registry.live_id)
    delta = load_delta(version)
    model = base_model
    if delta:
        # The float32 base files, as the worker built the candidate: in half precision
        # the served weights' own rounding would give other weights than those gated.
        apply_delta(model, read_base_weights(registry.base_path, dense_names(delta)), delta)
    model.eval()
    if use_frozen and version.version_id != BASE_VERSION:
        cache = registry.frozen_cache(version.version_id)
        step: StepModel | None = None
        if cache.is_file():
            try:
                step = FrozenStepModel.load(cache, device)
            except FreezeError as exc:
                # Unreadable, or written before frozen modules batched: rebuilt below.
                log.warning("version %s: cached frozen module unusable (%s); re-freezing", version.version_id, exc)
                cache.unlink(missing_ok=True)
        # Written under a private name, then renamed: replicas loading the same version
        # never read a half-written module (a leftover is pruned like any stale cache).
        tmp = registry.frozen_cache(f".{version.version_id}.{os.getpid()}")
        try:
            if step is None:
                log.info("version %s: freezing (no usable cached frozen module)", version.version_id)
                dtype = next(model.parameters()).dtype
                step = freeze_version(registry.base_path, version.delta_path, tmp, dtype, device, freeze_tolerance)
                tmp.replace(cache)
            return LoadedVersion(version, model, delta, step, "frozen")
        except (FreezeError, OSError):
            log.exception("version %s: frozen module unusable; serving it eagerly", version.version_id)
            tmp.unlink(missing_ok=True)
            cache.unlink(missing_ok=True)
    return LoadedVersion(version, model, delta, EagerStepModel(model), "eager")


def load_live_handle(registry: Registry, model_cfg: ModelConfig, version_id: str | None = None) -> ModelHandle:
    """Load a registry version (default: the live one) as a servable handle.

    A version whose artifacts are missing or corrupt falls back to its nearest
    intact ancestor (logged by the registry); base is the model folder itself.

    Args:
        registry: the version registry.
        model_cfg: device, dtype, context budget, ``use_frozen``.
        version_id: which version; None = live.

    Returns:
        The handle (frozen when the version has a usable frozen module and
        ``use_frozen`` is on, else eager).
    """
    base = load_eager_handle(registry.base_path, model_cfg)
    wanted = version_id or registry.live_id
    if wanted == BASE_VERSION:
        return base
    loaded = load_version(registry, base.torch_model, wanted, model_cfg.device, model_cfg.use_frozen)
    return ModelHandle(
        version=loaded.version.version_id,
        tokenizer=base.tokenizer,
        step_model=loaded.step_model,
        max_positions=base.max_positions,
        eos_token_ids=base.eos_token_ids,
        kind="frozen" if loaded.kind == "frozen" else "eager",
        torch_model=loaded.model,
    )


def read_base_weights(model_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Read some weights of the base model from its safetensors files (nothing else).

    Args:
        model_dir: the converted base model folder.
        names: state-dict names to read.

    Returns:
        name -> float32 tensor.

    Raises:
        LearningError: a name is in none of the files.
    """
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            stored = set(fh.keys())
            for name in names:
                if name in stored:
                    out[name] = fh.get_tensor(name).float()
    missing = set(names) - set(out)
    if missing:
        raise LearningError(f"base model {model_dir} lacks weights {sorted(missing)}")
    return out
