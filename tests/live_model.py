"""A stand-in for the server's LLM in learning tests: the live handle, swapped on deploy."""

from __future__ import annotations

from typing import Any

from dmha.learning import EagerStepModel
from dmha.llm.base import ModelHandle


class Live:
    """Holds the live handle (eager ``base`` at first) and records every deploy."""

    def __init__(self, model: Any, tokenizer: Any, max_positions: int = 512) -> None:
        self.handle = ModelHandle(
            version="base",
            tokenizer=tokenizer,
            step_model=EagerStepModel(model),
            max_positions=max_positions,
            eos_token_ids=frozenset({tokenizer.eos_token_id}),
            torch_model=model,
        )
        self.deployed: list[ModelHandle] = []

    def get(self) -> ModelHandle:
        """The live handle (the worker's ``get_live``)."""
        return self.handle

    def deploy(self, handle: ModelHandle) -> None:
        """The hot swap (the worker's ``deploy``)."""
        self.deployed.append(handle)
        self.handle = handle
