"""The knowledge base: statement parsing, Z3-checked reasoning, persistence, claims.

Statements follow the contract in DESIGN.md (``fact:``/``deny:``/``rule:``/``attr:``
lines). :class:`KnowledgeBase` is usable on its own (in memory);
:class:`KnowledgeBank` serves many users over one :class:`StatementStore`.
"""

from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.claims import (
    Claim,
    ClaimCheck,
    check_answer,
    entities_in,
    extract_claims,
    relevant_facts,
)
from dmha.knowledge.kb import ADMIN_ROLE, KnowledgeBase
from dmha.knowledge.model import (
    Answer,
    AttrDecl,
    Conflict,
    Explanation,
    Fact,
    Literal,
    Rule,
    Scope,
    Statement,
    StatementRecord,
    Status,
    TellResult,
    Verdict,
    format_value,
    python_value,
)
from dmha.knowledge.parser import (
    ParseResult,
    is_statement_line,
    parse,
    parse_literal,
    parse_statement,
)
from dmha.knowledge.store import InMemoryStore, RedisStore, StatementStore

__all__ = [
    "ADMIN_ROLE",
    "Answer",
    "AttrDecl",
    "Claim",
    "ClaimCheck",
    "Conflict",
    "Explanation",
    "Fact",
    "InMemoryStore",
    "KnowledgeBank",
    "KnowledgeBase",
    "Literal",
    "ParseResult",
    "RedisStore",
    "Rule",
    "Scope",
    "Statement",
    "StatementRecord",
    "StatementStore",
    "Status",
    "TellResult",
    "Verdict",
    "check_answer",
    "entities_in",
    "extract_claims",
    "format_value",
    "is_statement_line",
    "parse",
    "parse_literal",
    "parse_statement",
    "python_value",
    "relevant_facts",
]
