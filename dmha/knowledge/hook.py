"""The knowledge base's part in a chat turn.

Before generation: statement lines of the message are told to the caller's KB
(outcomes and conflict explanations go back in the reply) and the facts about
the entities the message mentions go into the prompt. After generation: the
reply's claims are checked with ``ask``; contradicted ones are recorded on the
turn for the consistency monitor, which runs after this hook.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dmha.executor import run_blocking
from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.claims import ClaimCheck, check_answer, relevant_facts
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.model import TellResult
from dmha.knowledge.parser import is_statement_line
from dmha.llm.base import GenerationResult
from dmha.llm.prompt import ContextBlock
from dmha.turn import ClaimOutcome, StatementOutcome, Turn, TurnState

__all__ = ["FACTS_TITLE", "KnowledgeHook", "claim_outcomes", "fact_sentence", "facts_block", "tell_outcomes"]

# Measured on the default 135M model (bench/chat_repeats.py, BENCHMARKS.md): under a
# title naming "facts" and a "knowledge base" with raw ``fact: x.a = v`` lines it
# answered a plain remark with 'The correct answer is: "<the remark>"', a quiz
# template it then kept for the whole session; plain sentences under this title do not.
FACTS_TITLE = "Facts the user told you"

_LINE = re.compile(r"^(fact|deny):\s*([^.\s]+)\.(\S+)\s*=\s*(.+?)\s*$")


def fact_sentence(line: str) -> str:
    """A ``fact:``/``deny:`` line as the plain sentence the prompt shows.

    ``fact: bob.age = 30`` -> "Bob's age is 30."; booleans read as adjectives
    (``fact: bob.quiet = true`` -> "Bob is quiet.", ``deny:`` or ``false`` -> "is not").

    Args:
        line: a line of :func:`relevant_facts`.

    Returns:
        The sentence (a line in another shape is returned unchanged).
    """
    m = _LINE.match(line)
    if m is None:
        return line
    kind, term, attribute, value = m.groups()
    negated = kind == "deny"
    name = term[:1].upper() + term[1:]
    attr = attribute.replace("_", " ")
    if value.lower() in ("true", "false"):
        negated ^= value.lower() == "false"
        return f"{name} is {'not ' if negated else ''}{attr}."
    return f"{name}'s {attr} is {'not ' if negated else ''}{value}."


def facts_block(lines: Sequence[str]) -> ContextBlock:
    """The prompt block of the facts a turn is given (see :func:`fact_sentence`)."""
    return ContextBlock(FACTS_TITLE, tuple(fact_sentence(line) for line in lines))


def _role(turn: TurnState) -> str:
    return "admin" if turn.principal.has("admin") else "user"


def tell_outcomes(result: TellResult) -> tuple[list[StatementOutcome], str]:
    """Per-statement outcomes of a tell, and one sentence for the frontend.

    Args:
        result: what :meth:`KnowledgeBase.tell` returned.

    Returns:
        ``(outcomes, notice)``.
    """
    out = [StatementOutcome(r.text(), "accepted", r.id) for r in result.accepted]
    for c in result.rejected:
        out.append(
            StatementOutcome(c.record.text(), "rejected", c.record.id, c.reason, tuple(x.text() for x in c.core))
        )
    for c in result.demoted:
        out.append(StatementOutcome(c.record.text(), "demoted", c.record.id, c.reason, tuple(x.text() for x in c.core)))
    parts = [f"{len(result.accepted)} statement(s) accepted"]
    if result.rejected:
        first = result.rejected[0]
        parts.append(f"{len(result.rejected)} rejected ({first.record.text()}: {first.reason})")
    if result.demoted:
        parts.append(f"{len(result.demoted)} earlier statement(s) superseded")
    return out, "; ".join(parts) + "."


def claim_outcomes(checks: Sequence[ClaimCheck]) -> list[ClaimOutcome]:
    """Claim checks as turn records."""
    return [
        ClaimOutcome(c.claim.literal.text(), c.answer.verdict.value, tuple(r.text() for r in c.answer.support))
        for c in checks
    ]


class KnowledgeHook:
    """:class:`~dmha.context.TurnHook` over a :class:`KnowledgeBank`.

    Args:
        bank: every user's knowledge base.
        max_facts: facts put into the prompt per turn.
    """

    def __init__(self, bank: KnowledgeBank, max_facts: int = 20) -> None:
        self._bank = bank
        self._max_facts = max_facts

    def kb_for(self, turn: TurnState) -> KnowledgeBase:
        """The caller's view, including the turn's session-scope statements."""
        return self._bank.for_user(turn.principal.user_id, turn.session_id, role=_role(turn))

    async def prepare(self, turn: TurnState) -> None:
        kb = self.kb_for(turn)
        if any(is_statement_line(line) for line in turn.message.splitlines()):
            result = await run_blocking(kb.tell, turn.message, source=f"chat:{turn.session_id}")
            turn.statements, turn.notice = tell_outcomes(result)
            turn.chat_text = "\n".join(result.chat_lines).strip()
        facts = await run_blocking(relevant_facts, kb, turn.chat_text or turn.message, self._max_facts)
        if facts:
            turn.blocks.insert(0, facts_block(facts))

    async def review(self, turn: TurnState, reply: GenerationResult, regenerate) -> GenerationResult:
        turn.claims = await self.check(turn, reply.text)
        return reply

    async def check(self, turn: TurnState, text: str) -> list[ClaimOutcome]:
        """Check the claims of ``text`` against the caller's KB (used by the monitor too)."""
        return claim_outcomes(await run_blocking(check_answer, self.kb_for(turn), text))

    async def constraints(self, turn: TurnState, text: str) -> list[str]:
        """Statements the reply must respect: facts about what the message and ``text`` mention."""
        kb = self.kb_for(turn)
        return await run_blocking(relevant_facts, kb, f"{turn.chat_text}\n{text}", self._max_facts)

    def committed(self, turn: TurnState, stored: Sequence[Turn]) -> None:
        return None
