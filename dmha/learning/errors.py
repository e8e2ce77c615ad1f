"""The online-learning errors (defined in :mod:`dmha.errors`, the one error tree)."""

from dmha.errors import ArtifactError, FreezeError, LearningError, TrainingDiverged

__all__ = ["ArtifactError", "FreezeError", "LearningError", "TrainingDiverged"]
