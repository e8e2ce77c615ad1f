"""What a report is drawn from, independent of where it was read.

The offline collector (:mod:`dmha.report.collect`) fills these from the stores of a
data folder; the ``dmha report`` command fills them from a running server through
the SDK. Figure functions take these records only, so both paths draw the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AttemptRecord",
    "JobRecord",
    "MemoryPoint",
    "ReportInputs",
    "ScoreRecord",
    "StatementRow",
    "TurnRecord",
    "VersionRecord",
]


@dataclass(frozen=True)
class MemoryPoint:
    """One long-term memory.

    Attributes:
        id: memory id.
        kind: ``turn``, ``summary``, ``cluster_summary`` or ``fact``.
        text: its text.
        created_at: Unix time.
        cluster_id: the stored HDBSCAN cluster (-1 noise, -2 not clustered yet).
        vector: its normalised embedding (None when not loaded).
    """

    id: str
    kind: str
    text: str
    created_at: float
    cluster_id: int
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StatementRow:
    """One knowledge-base statement as stored.

    Attributes:
        id: statement id.
        text: the statement line (``fact: ...``, ``rule: ...``).
        status: ``accepted`` or ``rejected``.
        reason: why it was rejected.
        conflicts_with: texts of the other statements of its conflict core.
        created_at: Unix time (0 when unknown).
    """

    id: str
    text: str
    status: str
    reason: str = ""
    conflicts_with: tuple[str, ...] = ()
    created_at: float = 0.0


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version.

    Attributes:
        version_id: ``base`` or ``v<n>``.
        parent: the version it was trained from.
        created_at: Unix time.
        status: ``base``, ``accepted`` or ``pruned``.
        live: True for the live version.
        metrics: gate and training figures.
        plan: the update plan (empty for base).
        feedback_ids: the feedback learned.
    """

    version_id: str
    parent: str | None
    created_at: float
    status: str
    live: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    feedback_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRecord:
    """One training job (deployed, rejected, failed or in flight).

    Attributes:
        job_id: job id.
        state: its state.
        created_at: submission time.
        updated_at: last change (for a deployed job: when it went live).
        metrics: gate and timing figures.
        plan: the update plan used.
        version: the version it produced (deployed jobs).
        message: the rejection reasons or the error.
        items: feedback items it learned.
    """

    job_id: str
    state: str
    created_at: float
    updated_at: float
    metrics: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    message: str = ""
    items: int = 1


@dataclass(frozen=True)
class AttemptRecord:
    """One update attempt as the causal meta-learner recorded it (a job has one per try).

    Attributes:
        job_id: the job.
        attempt: 0 for the first try, 1, 2... for repairs.
        outcome: ``deployed``, ``rejected`` or ``failed``.
        lambda_causal: λ1 the attempt trained with (after the learner's adjustment).
        lambda_locality: λ2 likewise.
        learning_rate: the learning rate likewise (θ with the plan's scale).
        reward: the learner's reward for it.
        repair: why it was a repair ("" for a first try).
    """

    job_id: str
    attempt: int
    outcome: str
    lambda_causal: float
    lambda_locality: float
    learning_rate: float
    reward: float = 0.0
    repair: str = ""


@dataclass(frozen=True)
class ScoreRecord:
    """The consistency monitor's verdict on one reply.

    Attributes:
        turn_id: the assistant turn.
        session_id: its session.
        created_at: Unix time.
        score: inconsistency score in [0, 1].
        signals: the named signals.
        fired: True when the score reached the threshold.
        outcome: ``passed``, or the firing's outcome (``corrected``...).
        actions: what the self-correction loop did.
    """

    turn_id: str
    session_id: str
    created_at: float
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    fired: bool = False
    outcome: str = "passed"
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class TurnRecord:
    """One working-memory turn.

    Attributes:
        turn_id: turn id.
        session_id: its session.
        role: ``user`` or ``assistant``.
        text: what was said.
        created_at: Unix time.
    """

    turn_id: str
    session_id: str
    role: str
    text: str
    created_at: float


@dataclass
class ReportInputs:
    """Everything one report is drawn from.

    Attributes:
        user_id: whose memories, statements, turns and scores.
        since: only records at or after this Unix time (0 = all).
        source: where they were read (shown in the report).
        memories: the user's long-term memories.
        statements: the user's knowledge base.
        versions: every model version (deployment-wide).
        jobs: training jobs (deployment-wide).
        scores: monitor verdicts on the user's replies, oldest first.
        threshold: the monitor's firing threshold.
        turns: the user's working-memory turns, by session, oldest first.
        attempts: the meta-learner's record of every update attempt.
        notes: what could not be read, per section key (shown in place of a figure).
    """

    user_id: str
    since: float = 0.0
    source: str = ""
    memories: list[MemoryPoint] = field(default_factory=list)
    statements: list[StatementRow] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    scores: list[ScoreRecord] = field(default_factory=list)
    threshold: float = 0.5
    turns: list[TurnRecord] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
