"""Online learning: feedback becomes a LoRA update that is gated, frozen and hot-swapped.

Parts (each usable alone): :class:`UpdatePlan` (how an update is made),
:class:`Trainer` with its :class:`Objective` (task CE + causal KL + locality KL),
:func:`paraphrases`, :class:`Gate`, :func:`freeze` / :class:`FrozenStepModel` /
:class:`EagerStepModel`, :class:`Registry` (immutable versions, live pointer),
:class:`JobStore` (durable jobs in Redis) and :class:`LearningWorker`, which
composes them.
"""

from dmha.learning.errors import ArtifactError, FreezeError, LearningError, TrainingDiverged
from dmha.learning.feedback import FeedbackItem
from dmha.learning.freezing import FrozenStepModel, freeze, pick_device, verify_step_model
from dmha.learning.gate import Gate, GateReference, GateReport, GateThresholds, build_gate_reference
from dmha.learning.jobs import RUNNING_STATES, TERMINAL_STATES, Job, JobEvent, JobState, JobStore
from dmha.learning.loading import LoadedVersion, load_version
from dmha.learning.objective import Objective, RetainSet, build_retain_set
from dmha.learning.paraphrase import paraphrases
from dmha.learning.plan import UpdatePlan
from dmha.learning.prompting import ChatFormat
from dmha.learning.registry import BASE_VERSION, Artifact, Registry, Version
from dmha.learning.steps import EagerStepModel, LlamaStepCore, UnsupportedArchitecture
from dmha.learning.trainer import Trainer, TrainResult, apply_adapter
from dmha.learning.worker import LearningWorker, PlanHook

__all__ = [
    "BASE_VERSION",
    "RUNNING_STATES",
    "TERMINAL_STATES",
    "Artifact",
    "ArtifactError",
    "ChatFormat",
    "EagerStepModel",
    "FeedbackItem",
    "FreezeError",
    "FrozenStepModel",
    "Gate",
    "GateReference",
    "GateReport",
    "GateThresholds",
    "Job",
    "JobEvent",
    "JobState",
    "JobStore",
    "LearningError",
    "LearningWorker",
    "LlamaStepCore",
    "LoadedVersion",
    "Objective",
    "PlanHook",
    "Registry",
    "RetainSet",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "UnsupportedArchitecture",
    "UpdatePlan",
    "Version",
    "apply_adapter",
    "build_gate_reference",
    "build_retain_set",
    "freeze",
    "load_version",
    "paraphrases",
    "pick_device",
    "verify_step_model",
]
