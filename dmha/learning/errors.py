"""Errors of the online-learning subsystem, placed in the tree of :mod:`dmha.errors`.

    DMHAError
    └── LearningError               an update could not be made (job -> failed)
        ├── TrainingDiverged        NaN/inf loss; the live model is untouched
        ├── FreezeError             tracing/verification of the frozen module failed
        └── ArtifactError           a version's files are missing or corrupt
"""

from __future__ import annotations

from dmha.errors import DMHAError

__all__ = ["ArtifactError", "FreezeError", "LearningError", "TrainingDiverged"]


class LearningError(DMHAError):
    """An update could not be made; the live model is unchanged."""


class TrainingDiverged(LearningError):
    """The loss became NaN or infinite.

    Args:
        step: 1-based step at which it happened.
        loss: the offending value.
    """

    def __init__(self, step: int, loss: float) -> None:
        self.step = step
        self.loss = loss
        super().__init__(
            f"training diverged at step {step} (loss={loss}); lower the learning rate "
            "or the loss weights; the live model is unchanged"
        )


class FreezeError(LearningError):
    """The model could not be traced, or the frozen module disagrees with eager."""


class ArtifactError(LearningError):
    """A version's artifact is missing, unreadable or fails its checksum."""
