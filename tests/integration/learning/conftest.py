"""The tiny tokenizer and model of the learning unit tests, for the worker tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

TINY_MODELS = Path(__file__).parents[2] / "unit" / "learning" / "tiny_models.py"


def tiny_models() -> Any:
    """Import ``tests/unit/learning/tiny_models.py`` by path."""
    name = "dmha_tests_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TINY_MODELS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The in-memory tokenizer (shared; never mutated)."""
    return tiny_models().build_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer: Any) -> Any:
    """A fresh tiny Llama."""
    return tiny_models().build_model(len(tiny_tokenizer))
