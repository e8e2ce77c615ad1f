"""The knowledge base's nouns: statements, literals, records, answers.

Values are kept as their canonical statement text (``bob``, ``30``, ``0.5``,
``"New York"``, ``true``) rather than as Python objects: the text is hashable,
unambiguous across kinds (``1`` is not ``true``, the identifier ``bob`` is not the
string ``"bob"``) and renders back to the contract syntax unchanged.
:func:`python_value` converts one to a Python value when a caller needs it.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import TypedDict

__all__ = [
    "Answer",
    "AttrDecl",
    "Conflict",
    "Explanation",
    "Fact",
    "Literal",
    "Rule",
    "Scope",
    "Statement",
    "StatementOptions",
    "StatementRecord",
    "Status",
    "TellResult",
    "Verdict",
    "format_value",
    "python_value",
]

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_VALUES = frozenset({"true", "false"})

# A ground literal inside the reasoner: (entity, attribute, value, positive), with the
# boolean rule applied (``x.a = false`` is stored as ``not x.a = true``). Plain tuples
# keep hashing and memory cheap at 100k literals.
Lit = tuple[str, str, str, bool]


class StatementOptions(TypedDict, total=False):
    """The bracketed options every statement kind takes, as keyword arguments."""

    confidence: float
    scope: Scope | None
    source: str | None
    created_at: float | None


class Scope(enum.StrEnum):
    """Who sees a statement: one session, one user (all sessions), or everybody."""

    SESSION = "session"
    USER = "user"
    GLOBAL = "global"


# Narrower scope wins ties in the resolution policy.
SCOPE_RANK = {Scope.GLOBAL: 0, Scope.USER: 1, Scope.SESSION: 2}


class Verdict(enum.StrEnum):
    """The answer to :meth:`KnowledgeBase.ask`."""

    ENTAILED = "ENTAILED"
    CONTRADICTED = "CONTRADICTED"
    UNKNOWN = "UNKNOWN"


class Status(enum.StrEnum):
    """Whether a stored statement takes part in reasoning."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


def is_variable(term: str) -> bool:
    """True for ``?x`` terms."""
    return term.startswith("?")


def is_entity(value: str) -> bool:
    """True when a value can name an entity (an identifier, not a number/string/bool)."""
    return bool(IDENT_RE.match(value)) and value not in RESERVED_VALUES


def format_value(value: object) -> str:
    """Canonical statement text of a Python value.

    Args:
        value: ``bool``, ``int``, ``float`` or ``str``; a ``str`` that is an
            identifier becomes that identifier (lower-cased), any other ``str``
            becomes a quoted string.

    Returns:
        The canonical value text, e.g. ``bob``, ``30``, ``0.5``, ``"New York"``, ``true``.

    Raises:
        ValueError: an unsupported type or a non-finite float.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        low = value.lower()
        if IDENT_RE.match(value) and low not in RESERVED_VALUES:
            return low
        return quote(value)
    raise ValueError(f"unsupported value type {type(value).__name__}")


def quote(text: str) -> str:
    """Render a quoted-string value."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def python_value(value: str) -> bool | int | float | str:
    """The Python value of canonical value text (identifiers and strings become ``str``)."""
    if value in RESERVED_VALUES:
        return value == "true"
    if value.startswith('"'):
        body = value[1:-1]
        out, i = [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                nxt = body[i + 1]
                out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                i += 2
                continue
            out.append(ch)
            i += 1
        return "".join(out)
    if value[:1].isdigit() or value[:1] == "-":
        return float(value) if any(c in value for c in ".eE") else int(value)
    return value


def normalize(entity: str, attribute: str, value: str, positive: bool) -> Lit:
    """Apply the boolean rule: ``x.a = false`` is the literal ``not x.a = true``."""
    if value == "false":
        return (entity, attribute, "true", not positive)
    return (entity, attribute, value, positive)


def lit_text(lit: Lit) -> str:
    """Render a reasoner literal as statement text."""
    entity, attribute, value, positive = lit
    return f"{'' if positive else 'not '}{entity}.{attribute} = {value}"


@dataclass(frozen=True, slots=True)
class Literal:
    """``[not] entity.attribute = value``; terms starting with ``?`` are variables.

    Attributes:
        entity: lower-cased identifier or ``?variable``.
        attribute: lower-cased identifier.
        value: canonical value text (see :func:`format_value`) or ``?variable``.
        negated: True for ``not ...``.
    """

    entity: str
    attribute: str
    value: str
    negated: bool = False

    @classmethod
    def of(cls, entity: str, attribute: str, value: object, negated: bool = False) -> Literal:
        """Build a ground literal from Python values (``Literal.of("Bob", "age", 30)``)."""
        return cls(entity.lower(), attribute.lower(), format_value(value), negated)

    @property
    def is_ground(self) -> bool:
        """True when no term is a variable."""
        return not (is_variable(self.entity) or is_variable(self.value))

    def key(self) -> Lit:
        """The reasoner's normalised form of this (ground) literal."""
        return normalize(self.entity, self.attribute, self.value, not self.negated)

    def text(self) -> str:
        """Statement-syntax rendering, e.g. ``not bob.smart = true``."""
        return f"{'not ' if self.negated else ''}{self.entity}.{self.attribute} = {self.value}"

    def __str__(self) -> str:
        return self.text()


def _options_text(stmt: Fact | Rule | AttrDecl) -> str:
    parts = []
    if stmt.confidence != 1.0:
        parts.append(f"confidence={format_value(stmt.confidence)}")
    if stmt.scope is not None:
        parts.append(f"scope={stmt.scope}")
    if stmt.source is not None:
        parts.append(f"source={quote(stmt.source)}")
    return f"  [{', '.join(parts)}]" if parts else ""


@dataclass(frozen=True, slots=True)
class Fact:
    """``fact:`` (``negated=False``) or ``deny:`` (``negated=True``) statement.

    Attributes:
        entity: lower-cased identifier.
        attribute: lower-cased identifier.
        value: canonical value text.
        negated: True for ``deny:``.
        confidence: in [0, 1]; higher wins conflicts.
        scope: session/user/global; None until a knowledge base assigns the default.
        source: free-text provenance, or None.
        created_at: Unix time stamped by the knowledge base; None when only parsed.
    """

    entity: str
    attribute: str
    value: str
    negated: bool = False
    confidence: float = 1.0
    scope: Scope | None = None
    source: str | None = None
    created_at: float | None = None

    @property
    def literal(self) -> Literal:
        """The literal this statement asserts."""
        return Literal(self.entity, self.attribute, self.value, self.negated)

    def text(self, options: bool = True) -> str:
        """Render as a statement line (with its ``[...]`` options unless ``options=False``)."""
        prefix = "deny" if self.negated else "fact"
        body = f"{prefix}: {self.entity}.{self.attribute} = {self.value}"
        return body + (_options_text(self) if options else "")


@dataclass(frozen=True, slots=True)
class Rule:
    """``rule: [name:] if body (and body)* then head`` — a directed Horn rule.

    Attributes:
        name: optional lower-cased identifier.
        body: the condition literals (all must be derivable).
        head: the concluded literal; its variables all occur in the body.
        confidence, scope, source, created_at: as for :class:`Fact`.
    """

    name: str | None
    body: tuple[Literal, ...]
    head: Literal
    confidence: float = 1.0
    scope: Scope | None = None
    source: str | None = None
    created_at: float | None = None

    def text(self, options: bool = True) -> str:
        """Render as a statement line."""
        name = f"{self.name}: " if self.name else ""
        cond = " and ".join(lit.text() for lit in self.body)
        line = f"rule: {name}if {cond} then {self.head.text()}"
        return line + (_options_text(self) if options else "")


@dataclass(frozen=True, slots=True)
class AttrDecl:
    """``attr: <attribute> functional | multi``; the latest accepted one wins.

    Attributes:
        attribute: lower-cased identifier.
        kind: ``"functional"`` (at most one value per entity) or ``"multi"`` (a relation).
        confidence, scope, source, created_at: as for :class:`Fact`.
    """

    attribute: str
    kind: str
    confidence: float = 1.0
    scope: Scope | None = None
    source: str | None = None
    created_at: float | None = None

    def text(self, options: bool = True) -> str:
        """Render as a statement line."""
        return f"attr: {self.attribute} {self.kind}" + (_options_text(self) if options else "")


Statement = Fact | Rule | AttrDecl


def statement_kind(stmt: Statement) -> str:
    """``"fact"`` (``deny:`` included), ``"rule"`` or ``"attr"``."""
    if isinstance(stmt, Fact):
        return "fact"
    return "rule" if isinstance(stmt, Rule) else "attr"


@dataclass(frozen=True, slots=True)
class StatementRecord:
    """A stored statement with its identity and standing in the knowledge base.

    Attributes:
        id: opaque identifier, unique across users.
        statement: the statement, with scope and created_at filled in.
        status: accepted (takes part in reasoning) or rejected (kept for explanation).
        reason: why it was rejected; empty when accepted.
        conflicts_with: ids of the other statements of its minimal conflict core.
        namespace: the storage namespace (global, a user, or a user's session).
    """

    id: str
    statement: Statement
    status: Status = Status.ACCEPTED
    reason: str = ""
    conflicts_with: tuple[str, ...] = ()
    namespace: str = ""

    @property
    def scope(self) -> Scope:
        """The statement's scope."""
        return self.statement.scope or Scope.USER

    def text(self) -> str:
        """The statement rendered as a line."""
        return self.statement.text()


@dataclass(frozen=True, slots=True)
class Conflict:
    """A rejected statement, why, and the minimal set of statements it conflicted with.

    Attributes:
        record: the rejected (or demoted) statement.
        reason: human-readable cause, naming the clash and the policy criterion.
        core: the other statements of the minimal conflict core (winners included).
    """

    record: StatementRecord
    reason: str
    core: tuple[StatementRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class TellResult:
    """Outcome of one :meth:`KnowledgeBase.tell`.

    Attributes:
        accepted: the new statements now taking part in reasoning, with their ids.
        rejected: new statements that lost a conflict (kept, status rejected).
        demoted: previously accepted statements that lost to a new one.
        chat_lines: lines without a statement prefix, left to chat.
    """

    accepted: tuple[StatementRecord, ...] = ()
    rejected: tuple[Conflict, ...] = ()
    demoted: tuple[Conflict, ...] = ()
    chat_lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """Verdict of :meth:`KnowledgeBase.ask`.

    Attributes:
        query: the ground literal asked.
        verdict: ENTAILED, CONTRADICTED or UNKNOWN.
        support: a minimal set of statements that yields the verdict (empty for UNKNOWN).
        reason: short explanation, ``"timeout"`` when the solver ran out of budget.
    """

    query: Literal
    verdict: Verdict
    support: tuple[StatementRecord, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Explanation:
    """What :meth:`KnowledgeBase.explain` knows about one statement.

    Attributes:
        record: the statement as the caller's view sees it.
        reason: the rejection reason, or a summary of what it contributes.
        core: for a rejected statement, the rest of its minimal conflict core.
        consequences: literals derived with its help (capped), for an accepted one.
    """

    record: StatementRecord
    reason: str
    core: tuple[StatementRecord, ...] = ()
    consequences: tuple[Literal, ...] = field(default=())
