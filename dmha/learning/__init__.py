"""Online learning: feedback becomes a knowledge edit that is gated, frozen and hot-swapped.

Parts (each usable alone): :class:`UpdatePlan` (how an edit is made),
:class:`Editor` (a low-rank ``down_proj`` change confined to the null space of the
preserved keys, :mod:`dmha.learning.nullspace`) with its :class:`Objective` (task CE +
causal KL + locality KL), :class:`References` (what every edit of a base model
shares, cached on disk), :func:`paraphrases`, :class:`Gate`, :func:`freeze` /
:class:`FrozenStepModel` / :class:`EagerStepModel`, :class:`Registry` (immutable
versions storing deltas, live pointer, retention), :class:`JobStore` (durable jobs
in Redis) and :class:`LearningWorker`, which composes them.
"""

from dmha.errors import ArtifactError, FreezeError, LearningError, TrainingDiverged
from dmha.learning.editor import Editor, EditResult, NullSpaceDelta, apply_delta
from dmha.learning.feedback import FeedbackItem
from dmha.learning.freezing import FrozenStepModel, freeze, pick_device, verify_step_model
from dmha.learning.gate import (
    Gate,
    GateReference,
    GateReport,
    GateThresholds,
    LocalityScore,
    build_gate_reference,
    compare_logits,
)
from dmha.learning.jobs import RUNNING_STATES, TERMINAL_STATES, Job, JobEvent, JobState, JobStore
from dmha.learning.loading import LoadedVersion, load_delta, load_version, save_delta
from dmha.learning.nullspace import KeyStats, collect_keys, null_basis
from dmha.learning.objective import Objective, RetainSet, build_retain_set
from dmha.learning.paraphrase import paraphrases
from dmha.learning.plan import UpdatePlan
from dmha.learning.prompting import ChatFormat
from dmha.learning.references import References, ensure_references
from dmha.learning.registry import BASE_VERSION, Artifact, Registry, Version
from dmha.learning.steps import EagerStepModel, LlamaStepCore, UnsupportedArchitecture
from dmha.learning.worker import LearningWorker, PlanHook

__all__ = [
    "BASE_VERSION",
    "RUNNING_STATES",
    "TERMINAL_STATES",
    "Artifact",
    "ArtifactError",
    "ChatFormat",
    "EagerStepModel",
    "EditResult",
    "Editor",
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
    "KeyStats",
    "LearningError",
    "LearningWorker",
    "LlamaStepCore",
    "LoadedVersion",
    "LocalityScore",
    "NullSpaceDelta",
    "Objective",
    "PlanHook",
    "References",
    "Registry",
    "RetainSet",
    "TrainingDiverged",
    "UnsupportedArchitecture",
    "UpdatePlan",
    "Version",
    "apply_delta",
    "build_gate_reference",
    "build_retain_set",
    "collect_keys",
    "compare_logits",
    "ensure_references",
    "freeze",
    "load_delta",
    "load_version",
    "null_basis",
    "paraphrases",
    "pick_device",
    "save_delta",
    "verify_step_model",
]
