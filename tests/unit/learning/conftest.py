"""Tiny, self-contained models for the learning unit tests: no real model needed."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest


def load_tiny_models() -> Any:
    """Import ``tiny_models.py`` by path (works under any pytest import mode)."""
    name = "dmha_tests_tiny_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tiny_models.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


build_model = load_tiny_models().build_model
build_tokenizer = load_tiny_models().build_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The in-memory tokenizer (shared; never mutated)."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def _tiny_model(tiny_tokenizer: Any) -> Any:
    return build_model(len(tiny_tokenizer))


@pytest.fixture
def tiny_model(_tiny_model: Any) -> Any:
    """A fresh copy of the tiny model per test (tests may mutate it)."""
    return copy.deepcopy(_tiny_model)


@pytest.fixture
def fmt(tiny_tokenizer: Any) -> Any:
    """The chat format over the tiny tokenizer."""
    from dmha.learning.prompting import ChatFormat

    return ChatFormat(tiny_tokenizer, "You are DMHA.")
