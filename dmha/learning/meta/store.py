"""The meta registry: update records, learner versions and insights on disk.

Layout under ``<registry>/meta``::

    records.jsonl          one (state, plan, outcome) record per update attempt
    versions.json          learner versions: version, created_at, deltas, causal stability
    learner/<version>.pt   the learner's weights per version
    init.pt                the meta-initialisation of the edit factors (Φ)

    .lock                  the advisory lock of every read-modify-write below

Everything is append-only or replaced atomically, so a crash leaves the previous
learner in force. A damaged checkpoint means the fixed plan (logged), never a
refusal to train.

Several ``dmha worker`` processes may share one registry: appending a record,
rewriting ``records.jsonl`` (import), adding a learner version and updating ``Φ``
each hold an exclusive lock on ``.lock`` (``flock``), so no process loses another's
record, version or ``Φ`` update, and two never write the same temporary file.
Reads take no lock: every file they read is replaced atomically or appended to
(a torn last line is skipped).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from dmha.errors import InvalidArgument
from dmha.file_lock import FileLock
from dmha.learning.meta.learner import DELTAS, MetaCausalLearner
from dmha.learning.meta.reptile import Factors, MetaInit
from dmha.learning.meta.state import MAX_SLOTS, UpdateState

__all__ = ["LearnerVersion", "MetaRecord", "MetaStore", "validate_insights"]

log = logging.getLogger(__name__)

INSIGHTS_FORMAT = "dmha-meta-insights/1"


@dataclass
class MetaRecord:
    """One update attempt as the meta-learner learns from it.

    Attributes:
        job_id: the training job.
        attempt: 0 for a first try, 1, 2, ... for repairs.
        text: the feedback input (for similarity to later updates).
        state: the state the learner saw.
        action: the applied log-space deltas (:data:`~dmha.learning.meta.learner.DELTAS`).
        goodness: per slot, the modules' goodness ``Q`` on the observed steps.
        outcome: ``deployed``, ``rejected`` or ``failed``.
        reward: the design's reward of the attempt.
        figures: loss_last, causal_last, flops, flops_full, steps, step_budget ...
        mechanisms: edit layer -> share of the edit's effect on the fact's keys.
        repair: why this attempt was a repair ("" for a first try).
        created_at: UNIX time.
    """

    job_id: str
    attempt: int
    text: str
    state: dict[str, Any]
    action: dict[str, float]
    goodness: list[float]
    outcome: str
    reward: float
    figures: dict[str, float] = field(default_factory=dict)
    mechanisms: dict[str, float] = field(default_factory=dict)
    repair: str = ""
    created_at: float = field(default_factory=time.time)

    def update_state(self) -> UpdateState:
        """The stored state as an :class:`UpdateState`."""
        return UpdateState.from_dict(self.state)

    def action_vector(self) -> torch.Tensor:
        """The applied deltas as a float32 vector in DELTAS order."""
        return torch.tensor([float(self.action.get(k, 0.0)) for k in DELTAS])

    def goodness_vector(self) -> torch.Tensor:
        """Goodness per slot, padded to MAX_SLOTS with the last value (or 1)."""
        g = list(self.goodness[:MAX_SLOTS]) or [1.0]
        g += [g[-1]] * (MAX_SLOTS - len(g))
        return torch.tensor(g, dtype=torch.float32)


@dataclass(frozen=True)
class LearnerVersion:
    """One trained learner.

    Attributes:
        version: ``m0001``, ``m0002``, ...
        created_at: UNIX time.
        records: records it was trained on.
        deltas: its mean output per delta over those records' states.
        causal_stability: share of recent deployed updates whose causal KL fell.
        loss: final training loss.
    """

    version: str
    created_at: float
    records: int
    deltas: dict[str, float]
    causal_stability: float
    loss: float


class MetaStore:
    """Reads and writes the meta registry.

    Args:
        root: ``<registry>/meta`` (created if absent).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "learner").mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.root / ".lock")

    @property
    def records_path(self) -> Path:
        """The JSONL file of records."""
        return self.root / "records.jsonl"

    @property
    def init_path(self) -> Path:
        """Where Φ lives."""
        return self.root / "init.pt"

    def _tmp(self, name: str) -> Path:
        # Unique per process: a writer never shares its temporary file with another,
        # even where the lock degrades to this process's threads.
        return self.root / f".{name}.{os.getpid()}.tmp"

    def append(self, record: MetaRecord) -> None:
        """Append one record (flushed to disk before returning)."""
        line = json.dumps(asdict(record), sort_keys=True)
        with self._lock.held(), self.records_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self, limit: int | None = None) -> list[MetaRecord]:
        """The most recent records, oldest first (a torn last line is skipped)."""
        if not self.records_path.exists():
            return []
        out = []
        for line in self.records_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(MetaRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a crash mid-write
        return out[-limit:] if limit else out

    def versions(self) -> list[LearnerVersion]:
        """Learner versions, oldest first."""
        path = self.root / "versions.json"
        if not path.exists():
            return []
        try:
            return [LearnerVersion(**v) for v in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError) as exc:
            log.warning("meta versions file unreadable (%s); treating the learner as untrained", exc)
            return []

    def save_learner(self, learner: MetaCausalLearner, info: LearnerVersion) -> LearnerVersion:
        """Store a new learner version (weights first, then the index).

        Args:
            learner: the trained learner.
            info: its version record; ``info.version`` is normally :meth:`next_version`.

        Returns:
            The record as stored: when another process stored ``info.version`` since
            it was chosen, the learner gets the next free version instead.
        """
        with self._lock.held():
            versions = self.versions()
            if any(v.version == info.version for v in versions):
                info = replace(info, version=f"m{len(versions) + 1:04d}")
            tmp = self._tmp(f"learner-{info.version}")
            torch.save(learner.state_dict(), tmp)
            tmp.replace(self.root / "learner" / f"{info.version}.pt")
            idx = self._tmp("versions")
            idx.write_text(json.dumps([asdict(v) for v in [*versions, info]], indent=1), encoding="utf-8")
            idx.replace(self.root / "versions.json")
        return info

    def next_version(self) -> str:
        """The id the next trained learner gets."""
        return f"m{len(self.versions()) + 1:04d}"

    def load_learner(self) -> tuple[MetaCausalLearner, str | None]:
        """The newest learner, or the untrained safe prior when none is readable.

        Returns:
            ``(learner, version or None)``.
        """
        learner = MetaCausalLearner()
        for info in reversed(self.versions()):
            path = self.root / "learner" / f"{info.version}.pt"
            try:
                learner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return learner.eval(), info.version
            except Exception as exc:  # missing or corrupt: fall back, never refuse
                log.warning("meta-learner %s unreadable (%s); trying an older one", info.version, exc)
                learner = MetaCausalLearner()
        return learner.eval(), None

    def update_init(
        self,
        method: Literal["reptile", "fomaml", "none"],
        step: float,
        adapted: dict[int, Factors],
        grads: dict[int, Factors] | None = None,
    ) -> MetaInit:
        """Move the stored ``Φ`` towards an accepted edit (read, update, write under the lock).

        ``Φ`` is read from disk rather than taken from memory so that an update another
        process stored since this one last read it is built on, not overwritten.

        Args:
            method: the meta-initialisation method (``MetaConfig.meta_init``).
            step: its step ``α``.
            adapted: slot -> the edit's final factors.
            grads: slot -> the gradient at them (first-order MAML only).

        Returns:
            ``Φ`` as stored.
        """
        with self._lock.held():
            init = MetaInit.load(self.init_path, method, step)
            init.update(adapted, grads)
            init.save(self.init_path, self._tmp("init"))
        return init

    # -- insights ------------------------------------------------------------

    def insights(self) -> dict[str, Any]:
        """Mechanisms (which layers carried edits), learner versions and repair counts.

        Returns:
            A JSON-ready document (format :data:`INSIGHTS_FORMAT`).
        """
        records = self.records()
        layers: dict[str, dict[str, float]] = {}
        for r in records:
            for layer, share in r.mechanisms.items():
                s = layers.setdefault(layer, {"strength": 0.0, "edits": 0.0, "deployed": 0.0})
                s["strength"] += share
                s["edits"] += 1
                s["deployed"] += 1.0 if r.outcome == "deployed" else 0.0
        mechanisms = []
        for layer, s in sorted(layers.items(), key=lambda kv: int(kv[0])):
            n = s["edits"]
            mechanisms.append(
                {
                    "module": f"model.layers.{layer}.mlp.down_proj",
                    "layer": int(layer),
                    "strength": s["strength"] / n,
                    "effectiveness": s["deployed"] / n,
                    # More observations, more confidence (saturates around 20 edits).
                    "confidence": n / (n + 5.0),
                    "edits": int(n),
                }
            )
        return {
            "format": INSIGHTS_FORMAT,
            "mechanisms": mechanisms,
            "learner_versions": [asdict(v) for v in self.versions()],
            "updates": len(records),
            "repairs": sum(1 for r in records if r.repair),
            "deployed": sum(1 for r in records if r.outcome == "deployed"),
            "records": [asdict(r) for r in records],
        }

    def import_insights(self, doc: Any) -> int:
        """Add another deployment's records to this one's replay data.

        Args:
            doc: a document as :meth:`insights` writes it.

        Returns:
            Records added (those whose job and attempt are not already here).

        Raises:
            InvalidArgument: the document is malformed (the field is named).
        """
        records = validate_insights(doc)
        # Imported records are older than this deployment's own: they go before them,
        # so the replay window (the most recent records) keeps the local history.
        with self._lock.held():
            mine = self.records()
            have = {(r.job_id, r.attempt) for r in mine}
            new = [r for r in records if (r.job_id, r.attempt) not in have]
            if new:
                tmp = self._tmp("records")
                with tmp.open("w", encoding="utf-8") as fh:
                    for r in [*new, *mine]:
                        fh.write(json.dumps(asdict(r), sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                tmp.replace(self.records_path)
        return len(new)


def validate_insights(doc: Any) -> list[MetaRecord]:
    """Check an insights document and return its records.

    Raises:
        InvalidArgument: naming the first bad field.
    """
    if not isinstance(doc, dict):
        raise InvalidArgument("insights", "must be a JSON object")
    if doc.get("format") != INSIGHTS_FORMAT:
        raise InvalidArgument("insights.format", f"must be {INSIGHTS_FORMAT!r}")
    raw = doc.get("records")
    if not isinstance(raw, list):
        raise InvalidArgument("insights.records", "must be a list")
    out = []
    for i, r in enumerate(raw):
        where = f"insights.records[{i}]"
        if not isinstance(r, dict):
            raise InvalidArgument(where, "must be an object")
        for name, kind in (("job_id", str), ("outcome", str), ("text", str), ("state", dict), ("action", dict)):
            if not isinstance(r.get(name), kind):
                raise InvalidArgument(f"{where}.{name}", f"must be a {kind.__name__}")
        if r["outcome"] not in ("deployed", "rejected", "failed"):
            raise InvalidArgument(f"{where}.outcome", "must be deployed, rejected or failed")
        try:
            rec = MetaRecord(**{k: v for k, v in r.items() if k in MetaRecord.__dataclass_fields__})
            numbers = torch.cat(
                [
                    UpdateState.from_dict(rec.state).vector(),
                    rec.action_vector(),
                    rec.goodness_vector(),
                    torch.tensor([float(rec.reward)]),
                ]
            )
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(where, f"malformed record: {exc}") from exc
        if not bool(torch.isfinite(numbers).all()):
            # Python's JSON reader accepts NaN and Infinity; the learner must never see them.
            raise InvalidArgument(where, "state, action, goodness and reward must be finite numbers")
        out.append(rec)
    return out
