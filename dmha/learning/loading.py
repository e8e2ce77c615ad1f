"""Rebuild a registered version in memory: the base model plus the adapters of its ancestry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dmha.learning.errors import FreezeError
from dmha.learning.freezing import FrozenStepModel
from dmha.learning.registry import Registry, Version
from dmha.learning.steps import EagerStepModel
from dmha.learning.trainer import apply_adapter
from dmha.llm.base import StepModel

__all__ = ["LoadedVersion", "load_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to serve.

    Attributes:
        version: the record actually loaded (an ancestor of the one asked for when
            that one was damaged).
        model: the eager merged model (what the next update trains from).
        step_model: the frozen module when the version has one (and it loads), else eager.
        kind: ``frozen`` or ``eager``.
    """

    version: Version
    model: Any
    step_model: StepModel
    kind: str


def load_version(
    registry: Registry,
    base_model: Any,
    version_id: str | None = None,
    device: str = "auto",
    use_frozen: bool = True,
) -> LoadedVersion:
    """Load a version (default: the live one), falling back to intact ancestors.

    Args:
        registry: the registry.
        base_model: the freshly loaded base model; it is modified in place
            (the adapters are merged into it), so pass one nobody else serves.
        version_id: which version; None = the live pointer's.
        device: device of the frozen module (``auto``/``cpu``/``cuda``).
        use_frozen: load the frozen module when the version has one.

    Returns:
        The loaded version.

    Raises:
        NotFound: ``version_id`` does not exist.
        ArtifactError: not even the base model folder is usable.
    """
    version = registry.resolve(version_id or registry.live_id)
    model = base_model
    for v in reversed(registry.lineage(version.version_id)[:-1]):
        model = apply_adapter(model, v.adapter_dir)
    model.eval()
    frozen = version.frozen_path
    if use_frozen and frozen is not None:
        try:
            return LoadedVersion(version, model, FrozenStepModel.load(frozen, device), "frozen")
        except FreezeError:
            log.exception("version %s: frozen module unusable; serving it eagerly", version.version_id)
    return LoadedVersion(version, model, EagerStepModel(model), "eager")
