"""Metacognition: the consistency monitor over every reply and the self-correction loop."""

from dmha.metacognition.monitor import (
    ClaimChecker,
    EventStore,
    MonitorHook,
    RecordedEvent,
    ScoreEntry,
    score_signals,
)

__all__ = ["ClaimChecker", "EventStore", "MonitorHook", "RecordedEvent", "ScoreEntry", "score_signals"]
