"""A unit of feedback: an input and the answer the model should give to it."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from dmha.errors import InvalidArgument

__all__ = ["FeedbackItem", "new_id"]


def new_id() -> str:
    """A random, URL-safe identifier (32 hex characters)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class FeedbackItem:
    """``input`` should be answered with ``target``.

    Attributes:
        feedback_id: stable id (kept by the versions trained on it).
        input: the prompt, usually a question.
        target: the expected answer; the gate checks that greedy answers contain it.
    """

    feedback_id: str
    input: str
    target: str

    @classmethod
    def create(cls, input: str, target: str, max_bytes: int = 4096) -> FeedbackItem:
        """Validate and give a new item an id.

        Args:
            input: the prompt.
            target: the expected answer.
            max_bytes: largest UTF-8 size of either text (``LearningConfig.max_feedback_bytes``).

        Returns:
            The item.

        Raises:
            InvalidArgument: a text is empty or too long.
        """
        for name, text in (("input", input), ("target", target)):
            if not text or not text.strip():
                raise InvalidArgument(name, "must not be empty")
            size = len(text.encode("utf-8"))
            if size > max_bytes:
                raise InvalidArgument(name, f"is {size} bytes; limit {max_bytes}")
        return cls(new_id(), input.strip(), target.strip())

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackItem:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["feedback_id"]), str(data["input"]), str(data["target"]))
