"""Tiny, self-contained models for the learning unit tests: no real model needed."""

from __future__ import annotations

import copy
from typing import Any

from tiny_models import build_model, build_tokenizer

import pytest

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
