"""Sections of reasoning over what was said: the knowledge base and the consistency monitor."""

from __future__ import annotations

from pydantic import Field

from dmha.config.section import Section

__all__ = ["KnowledgeConfig", "MetacognitionConfig"]


class KnowledgeConfig(Section):
    enabled: bool = True
    """Parse statement lines in chat and check answers against the KB."""
    max_statements_per_user: int = Field(200_000, ge=1)
    """Beyond this a tell is RESOURCE_EXHAUSTED."""
    solver_timeout_ms: int = Field(2000, ge=10)
    """Per-call Z3 budget; on timeout the verdict is UNKNOWN with reason 'timeout'."""
    max_statement_bytes: int = Field(64 * 1024, ge=16)
    """Largest text accepted by one Tell."""
    max_rule_conditions: int = Field(32, ge=1)
    """Most conditions in one rule's body (the join a rule does grows with it)."""
    max_rules_per_scope: int = Field(1000, ge=1)
    """Most rules in one namespace (global, a user's, a session's)."""
    max_derivations: int = Field(200_000, ge=100)
    """Most derivation steps (join steps + fired rule instances) of one Tell; beyond
    it the Tell is RESOURCE_EXHAUSTED and nothing is added (measured: ~3 s on one busy core)."""
    max_operation_seconds: float = Field(5.0, gt=0)
    """Most seconds one Tell may hold the user's knowledge base; beyond it the Tell is
    RESOURCE_EXHAUSTED and nothing is added."""
    max_work_seconds_per_minute: float = Field(6.0, ge=0)
    """Seconds one user's Tells may run per minute (a bucket that refills continuously);
    once spent, Tells are RESOURCE_EXHAUSTED until it refills, so one user's expensive
    Tells cannot keep a thread (and the interpreter lock) busy. A Tell of an ordinary
    statement takes about a millisecond. 0 = no quota."""
    loaded_views: int = Field(64, ge=1)
    """(user, session) views kept loaded and grounded in memory (least recently used
    are dropped; a dropped view is re-grounded from the store on its next call)."""


class MetacognitionConfig(Section):
    enabled: bool = True
    """Score every answer and self-correct inconsistent ones."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Inconsistency score above which the self-correction loop runs."""
    max_attempts: int = Field(2, ge=0)
    """Regenerations before answering from the KB's verdict."""
    weight_kb: float = Field(0.7, ge=0)
    """Weight of the KB-contradiction signal."""
    weight_memory: float = Field(0.15, ge=0)
    """Weight of disagreement with retrieved memory."""
    weight_confidence: float = Field(0.15, ge=0)
    """Weight of low model confidence."""
    reorganise_memory: bool = True
    """After a KB contradiction, summarise the session's working memory into long-term memory and clear it."""
    enqueue_candidates: bool = True
    """Store a corrected answer as a learning candidate (a trainer promotes it; never trained unreviewed)."""
