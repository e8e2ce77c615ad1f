"""Claims in model answers, checked against the knowledge base; facts for prompts.

The extractor is deliberately conservative: it only turns a sentence into a literal
when the knowledge base already knows the attribute (or, for "X is V", knows V as a
value of exactly one attribute), because a wrong extraction would make the
consistency monitor fire on a correct answer.

Recognised forms (case-insensitive, one claim per sentence):

* statement lines the model emits: ``fact: bob.age = 30`` / ``deny: ...``;
* ``X's A is [not] V`` and ``The A of X is [not] V``;
* ``X is [not] V`` where V is a known boolean attribute (``Bob is smart`` ->
  ``bob.smart = true``) or a value of exactly one known attribute
  (``Bob is a doctor`` -> ``bob.job = doctor``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dmha.errors import StatementSyntaxError
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.model import Answer, Fact, Literal, Verdict, format_value, quote
from dmha.knowledge.parser import is_statement_line, parse_statement

__all__ = ["Claim", "ClaimCheck", "check_answer", "entities_in", "extract_claims", "relevant_facts"]

_SENTENCE_RE = re.compile(r"[^.!?;\n]+")
_PHRASE = r"[A-Za-z_][\w ]{0,60}?"
_POSSESSIVE_RE = re.compile(
    rf"^(?:the )?(?P<x>{_PHRASE})'s (?P<a>{_PHRASE}) (?:is|was) "
    r"(?P<neg>not )?(?P<v>.+)$",
    re.IGNORECASE,
)
_OF_RE = re.compile(
    rf"^the (?P<a>{_PHRASE}) of (?P<x>{_PHRASE}) (?:is|was) "
    r"(?P<neg>not )?(?P<v>.+)$",
    re.IGNORECASE,
)
_IS_RE = re.compile(rf"^(?P<x>{_PHRASE}) (?:is|was) (?P<neg>not )?(?P<v>.+)$", re.IGNORECASE)
_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?\Z")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_NAME_WORDS = 3


@dataclass(frozen=True, slots=True)
class Claim:
    """A literal an answer asserts.

    Attributes:
        literal: the ground literal.
        text: the sentence or line it came from.
        origin: ``"statement"`` (a line the model wrote) or ``"pattern"``.
    """

    literal: Literal
    text: str
    origin: str


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    """A claim and the knowledge base's verdict on it.

    Attributes:
        claim: the claim.
        answer: :meth:`KnowledgeBase.ask` on its literal.
        contradicted: True when the knowledge base contradicts the claim.
    """

    claim: Claim
    answer: Answer
    contradicted: bool


def _name(phrase: str) -> str | None:
    """``"New York"`` -> ``new_york``; None for anything that is not a short name."""
    words = _ARTICLE_RE.sub("", phrase.strip()).split()
    if not words or len(words) > _MAX_NAME_WORDS or not all(_WORD_RE.fullmatch(w) for w in words):
        return None
    name = "_".join(words).lower()
    return None if name in ("true", "false") else name


def _value(kb: KnowledgeBase, attribute: str | None, phrase: str) -> str | None:
    """The canonical value for ``phrase``, preferring a form the KB already uses."""
    text = _ARTICLE_RE.sub("", phrase.strip().strip("\"'").rstrip(",:")).strip()
    if not text:
        return None
    low = text.lower()
    if low in ("true", "false", "yes", "no"):
        return "true" if low in ("true", "yes") else "false"
    if _NUMBER_RE.match(text):
        return format_value(float(text) if "." in text else int(text))
    candidates = [c for c in (_name(text), quote(text)) if c is not None]
    if attribute is not None:
        for cand in candidates:
            if attribute in kb.attributes_having(cand):
                return cand
    return candidates[0]


def extract_claims(kb: KnowledgeBase, text: str) -> list[Claim]:
    """Find the literals an answer asserts.

    Args:
        kb: supplies the known attributes and values that gate the patterns.
        text: the model's answer.

    Returns:
        Claims in order of appearance, without duplicates.
    """
    claims: dict[Literal, Claim] = {}
    prose: list[str] = []
    for line in text.splitlines():
        if is_statement_line(line):
            try:
                stmt = parse_statement(line)
            except StatementSyntaxError:
                continue  # model output is untrusted prose: a broken line asserts nothing
            if isinstance(stmt, Fact):
                claims.setdefault(stmt.literal, Claim(stmt.literal, line.strip(), "statement"))
        else:
            prose.append(line)
    attributes = kb.attributes()
    for match in _SENTENCE_RE.finditer("\n".join(prose)):
        sentence = match.group().strip()
        lit = _pattern_claim(kb, attributes, sentence) if sentence else None
        if lit is not None:
            claims.setdefault(lit, Claim(lit, sentence, "pattern"))
    return list(claims.values())


def _pattern_claim(kb: KnowledgeBase, attributes: set[str], sentence: str) -> Literal | None:
    for regex in (_POSSESSIVE_RE, _OF_RE):
        m = regex.match(sentence)
        if m:
            entity, attribute = _name(m["x"]), _name(m["a"])
            if entity is None or attribute not in attributes:
                return None
            value = _value(kb, attribute, m["v"])
            return None if value is None else Literal(entity, attribute, value, bool(m["neg"]))
    m = _IS_RE.match(sentence)
    if not m:
        return None
    entity = _name(m["x"])
    if entity is None:
        return None
    negated = bool(m["neg"])
    word = _name(m["v"])
    if word is not None and word in attributes and word in kb.attributes_having("true"):
        return Literal(entity, word, "true", negated)
    value = _value(kb, None, m["v"])
    if value is None:
        return None
    owners = kb.attributes_having(value)
    if len(owners) != 1:
        return None  # unknown or ambiguous value: no claim rather than a wrong one
    return Literal(entity, owners[0], value, negated)


def check_answer(kb: KnowledgeBase, text: str) -> list[ClaimCheck]:
    """Ask the knowledge base about every claim of an answer.

    Args:
        kb: the caller's knowledge base.
        text: the model's answer.

    Returns:
        One check per claim; ``contradicted`` marks the ones the KB refutes.

    Raises:
        RedisUnavailable: the store failed.
    """
    out = []
    for claim in extract_claims(kb, text):
        answer = kb.ask(claim.literal)
        out.append(ClaimCheck(claim, answer, answer.verdict is Verdict.CONTRADICTED))
    return out


def entities_in(kb: KnowledgeBase, text: str) -> list[str]:
    """Known entities mentioned in ``text`` (``Bob's``, ``New York`` included).

    Args:
        kb: the caller's knowledge base.
        text: a message.

    Returns:
        Entity names in order of first mention.
    """
    words = [w.lower() for w in _WORD_RE.findall(text.replace("'s ", " "))]
    spans = {"_".join(words[i : i + n]) for n in range(1, _MAX_NAME_WORDS + 1) for i in range(len(words) - n + 1)}
    known = kb.known_entities(spans)
    found: dict[str, None] = {}
    i = 0
    while i < len(words):
        # Longest match first, so "New York" is new_york rather than new and york.
        for size in range(min(_MAX_NAME_WORDS, len(words) - i), 0, -1):
            name = "_".join(words[i : i + size])
            if name in known:
                found.setdefault(name, None)
                i += size
                break
        else:
            i += 1
    return list(found)


def relevant_facts(kb: KnowledgeBase, text: str, limit: int = 20) -> list[str]:
    """Statement lines about the entities of a message, for the prompt.

    Args:
        kb: the caller's knowledge base.
        text: the user's message.
        limit: at most this many lines.

    Returns:
        Derivable literals (stated or derived) as ``fact:``/``deny:`` lines.
    """
    lines: list[str] = []
    for entity in entities_in(kb, text):
        for lit in kb.literals_about(entity, limit):
            prefix = "deny" if lit.negated else "fact"
            lines.append(f"{prefix}: {lit.entity}.{lit.attribute} = {lit.value}")
            if len(lines) >= limit:
                return lines
    return lines
