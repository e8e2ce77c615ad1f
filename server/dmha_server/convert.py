"""Domain records -> protos (and the few request fields that need unpacking)."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from dmha.runtime import (
    Conflict,
    Fact,
    Job,
    JobEvent,
    MemoryRecord,
    RecordedEvent,
    RetrievedMemory,
    SessionInfo,
    StatementRecord,
    Turn,
    TurnResult,
    Version,
    statement_kind,
)
from dmha_proto.v1 import chat_pb2, common_pb2, knowledge_pb2, learning_pb2, memory_pb2, metacognition_pb2, session_pb2

__all__ = [
    "OptionFields",
    "chat_reply",
    "event_proto",
    "insights_proto",
    "job_proto",
    "memory_proto",
    "recorded_event_proto",
    "version_proto",
    "option_fields",
    "rejection_proto",
    "session_proto",
    "session_summary",
    "statement_proto",
]


class OptionFields(TypedDict):
    """GenerationOptions as keyword arguments of :func:`~dmha.context.resolve_options`."""

    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    seed: int | None
    stop: tuple[str, ...]


def option_fields(options: common_pb2.GenerationOptions) -> OptionFields:
    """The set fields of GenerationOptions as keyword arguments (unset -> None)."""

    def field(name: str) -> Any:
        return getattr(options, name) if options.HasField(name) else None

    return OptionFields(
        temperature=field("temperature"),
        top_p=field("top_p"),
        max_new_tokens=field("max_new_tokens"),
        seed=field("seed"),
        stop=tuple(options.stop),
    )


def chat_reply(result: TurnResult) -> chat_pb2.ChatReply:
    """A finished turn as the wire ChatReply."""
    return chat_pb2.ChatReply(
        session_id=result.session_id,
        user_turn_id=result.user_turn_id,
        assistant_turn_id=result.assistant_turn_id,
        text=result.text,
        usage=common_pb2.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        finish_reason=result.finish_reason,
        model_version=result.model_version,
        request_id=result.request_id,
        memories=[
            chat_pb2.RetrievedMemory(id=m.id, kind=m.kind, text=m.text, score=m.score, why=m.why)
            for m in result.memories
        ],
        statements=[
            chat_pb2.StatementOutcome(
                statement=s.statement,
                status=s.status,
                id=s.id,
                reason=s.reason,
                conflicts_with=list(s.conflicts_with),
            )
            for s in result.statements
        ],
        claims=[chat_pb2.ClaimCheck(claim=c.claim, verdict=c.verdict, support=list(c.support)) for c in result.claims],
        metacognition=[
            chat_pb2.MetacognitionEvent(
                id=e.id, score=e.score, signals=e.signals, actions=list(e.actions), outcome=e.outcome
            )
            for e in result.events
        ],
        warnings=list(result.warnings),
        notice=result.notice,
    )


def session_summary(info: SessionInfo) -> session_pb2.SessionSummary:
    """A listed session."""
    return session_pb2.SessionSummary(
        session_id=info.session_id, turn_count=info.turn_count, last_active=info.last_active
    )


def session_proto(session_id: str, turns: list[Turn]) -> session_pb2.Session:
    """A session with its turns."""
    return session_pb2.Session(
        session_id=session_id,
        turns=[session_pb2.Turn(turn_id=t.turn_id, role=t.role, text=t.text, created_at=t.created_at) for t in turns],
    )


# -- knowledge base --------------------------------------------------------------


def statement_proto(rec: StatementRecord) -> knowledge_pb2.Statement:
    """A stored KB statement."""
    stmt = rec.statement
    return knowledge_pb2.Statement(
        id=rec.id,
        text=rec.text(),
        kind=statement_kind(stmt) if not isinstance(stmt, Fact) else ("deny" if stmt.negated else "fact"),
        scope=rec.scope.value,
        confidence=stmt.confidence,
        source=stmt.source or "",
        created_at=stmt.created_at or 0.0,
        status=rec.status.value,
        reason=rec.reason,
    )


def rejection_proto(conflict: Conflict) -> knowledge_pb2.Rejection:
    """A rejected or demoted statement with its conflict core."""
    return knowledge_pb2.Rejection(
        statement=statement_proto(conflict.record),
        reason=conflict.reason,
        conflicts_with=[statement_proto(r) for r in conflict.core],
    )


def memory_proto(rec: MemoryRecord | RetrievedMemory) -> memory_pb2.Memory:
    """A long-term memory (stored or retrieved)."""
    return memory_pb2.Memory(
        id=rec.id,
        kind=rec.kind,
        text=rec.text,
        session_id=rec.session_id,
        created_at=rec.created_at,
        source_ids=list(rec.source_ids),
        cluster_id=rec.cluster_id,
        role=rec.role,
    )


def recorded_event_proto(r: RecordedEvent) -> metacognition_pb2.RecordedEvent:
    """A stored monitor event with its turn."""
    return metacognition_pb2.RecordedEvent(
        event=chat_pb2.MetacognitionEvent(
            id=r.event.id,
            score=r.event.score,
            signals=r.event.signals,
            actions=list(r.event.actions),
            outcome=r.event.outcome,
        ),
        session_id=r.session_id,
        turn_id=r.turn_id,
        created_at=r.created_at,
        original_text=r.original_text,
        final_text=r.final_text,
    )


def job_proto(job: Job) -> learning_pb2.Job:
    """A job record."""
    item = job.items[0] if job.items else None
    message = job.error or "; ".join(job.reasons)
    return learning_pb2.Job(
        job_id=job.job_id,
        state=job.state,
        step=job.step,
        total_steps=job.steps,
        loss=job.loss,
        metrics={k: float(v) for k, v in job.metrics.items()},
        message=message,
        version=job.version,
        created_at=job.created_at,
        updated_at=job.updated_at,
        input_text=item.input if item else "",
        target_text=item.target if item else "",
    )


def event_proto(event: JobEvent) -> learning_pb2.Job:
    """A progress event as a (partial) job record."""
    return learning_pb2.Job(
        job_id=event.job_id,
        state=event.state,
        step=event.step,
        total_steps=event.steps,
        loss=event.loss,
        metrics={k: float(v) for k, v in event.metrics.items()},
        message=event.error,
        version=event.version,
        updated_at=event.at,
    )


def version_proto(v: Version, live: str) -> learning_pb2.ModelVersion:
    """A model version."""
    return learning_pb2.ModelVersion(
        id=v.version_id,
        parent=v.parent or "",
        created_at=v.created_at,
        feedback_ids=list(v.feedback_ids),
        metrics=v.metrics,
        status=v.status,
        live=v.version_id == live,
        plan_json=json.dumps(v.plan.to_dict()) if v.plan else "",
    )


def insights_proto(doc: dict[str, Any]) -> learning_pb2.Insights:
    """The meta-learner's insights document: typed summary fields plus the whole JSON."""
    versions = doc.get("learner_versions", [])
    return learning_pb2.Insights(
        format=doc.get("format", ""),
        updates=doc.get("updates", 0),
        deployed=doc.get("deployed", 0),
        repairs=doc.get("repairs", 0),
        learner_versions=len(versions),
        learner_version=versions[-1]["version"] if versions else "",
        mechanisms=[
            learning_pb2.Mechanism(
                module=m["module"],
                layer=m["layer"],
                strength=m["strength"],
                effectiveness=m["effectiveness"],
                confidence=m["confidence"],
                edits=m["edits"],
            )
            for m in doc.get("mechanisms", [])
        ],
        # Compact: the document is mostly numbers, and it must fit an import request.
        insights_json=json.dumps(doc, separators=(",", ":")),
    )
