"""Z3 over one cone of the ground Horn program: entailment, supports, conflict cores.

Each statement gets an indicator Boolean passed as an assumption, so an unsat core
names statements directly; one solver is built per question and used incrementally
(the same assertions, different assumption sets) for deletion-based minimisation.
Literal variables are independent atoms — ``not x.a = v`` is its own variable — so
the encoding has no contraposition: only the integrity constraints of a conflict
question relate a literal and its negation.

Every call runs under a :class:`Deadline`; when the budget is spent the caller gets
:class:`SolverTimeout` and must answer UNKNOWN (never guess a verdict).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import z3

from dmha.knowledge.grounding import Clash, Cone
from dmha.knowledge.model import Lit

__all__ = ["Deadline", "HornSolver", "SolverTimeout"]


class SolverTimeout(Exception):
    """The per-call solver budget ran out (internal; callers map it to UNKNOWN)."""


class Deadline:
    """A wall-clock budget shared by every solver call of one public operation.

    Args:
        ms: the budget in milliseconds.
    """

    def __init__(self, ms: int) -> None:
        self._end = time.monotonic() + ms / 1000.0

    def remaining_ms(self) -> int:
        """Milliseconds left.

        Raises:
            SolverTimeout: none left.
        """
        left = int((self._end - time.monotonic()) * 1000)
        if left <= 0:
            raise SolverTimeout
        return left

    def check(self) -> None:
        """Raise :class:`SolverTimeout` when the budget is spent."""
        self.remaining_ms()


class HornSolver:
    """A Z3 solver holding one cone's clauses, each guarded by its statement's indicator.

    Args:
        ctx: the Z3 context of the owning knowledge base (Z3 contexts are not shared
            across threads, so each knowledge base has its own).
        cone: facts and fired rule instances to encode.
        deadline: the operation's budget.
        extra_ids: statements with no clause in the cone that still need an
            indicator (attribute declarations guarding functional constraints).
    """

    def __init__(self, ctx: z3.Context, cone: Cone, deadline: Deadline, extra_ids: Iterable[str] = ()) -> None:
        self._ctx = ctx
        self._deadline = deadline
        self._solver = z3.SolverFor("QF_FD", ctx=ctx)
        self._vars: dict[Lit, z3.BoolRef] = {}
        self._ind: dict[str, z3.BoolRef] = {}
        self._by_ast: dict[int, str] = {}
        clauses = []
        for lit, sids in cone.facts.items():
            head = self._var(lit)
            for sid in sids:
                clauses.append(z3.Implies(self.indicator(sid), head))
        for rid, head, body in cone.insts:
            cond = [self.indicator(rid), *(self._var(b) for b in body)]
            clauses.append(z3.Implies(z3.And(cond), self._var(head)))
        for sid in extra_ids:
            self.indicator(sid)
        if clauses:
            self._solver.add(*clauses)
        deadline.check()

    def indicator(self, sid: str) -> z3.BoolRef:
        """The assumption variable standing for statement ``sid``."""
        ind = self._ind.get(sid)
        if ind is None:
            ind = z3.Bool(f"s!{sid}", self._ctx)
            self._ind[sid] = ind
            self._by_ast[ind.get_id()] = sid
        return ind

    def _var(self, lit: Lit) -> z3.BoolRef:
        var = self._vars.get(lit)
        if var is None:
            var = z3.Bool(f"l!{len(self._vars)}", self._ctx)
            self._vars[lit] = var
        return var

    def _check(self, assumptions: list[z3.BoolRef]) -> bool:
        """True when unsat under ``assumptions``."""
        self._solver.set("timeout", self._deadline.remaining_ms())
        result = self._solver.check(*assumptions)
        if result == z3.unknown:
            raise SolverTimeout
        return result == z3.unsat

    def _minimise(self, fixed: list[z3.BoolRef]) -> set[str]:
        """Deletion-based minimisation of the statement part of the last unsat core."""
        core = {self._by_ast[a.get_id()] for a in self._solver.unsat_core() if a.get_id() in self._by_ast}
        for sid in sorted(core):
            if sid not in core:
                continue
            trial = [self._ind[s] for s in core if s != sid]
            if self._check(trial + fixed):
                core = {self._by_ast[a.get_id()] for a in self._solver.unsat_core() if a.get_id() in self._by_ast}
        return core

    def support(self, goal: Lit) -> frozenset[str] | None:
        """A minimal set of statements from which ``goal`` is derivable.

        Args:
            goal: a literal of the cone.

        Returns:
            Statement ids, or None when the cone does not entail ``goal``.

        Raises:
            SolverTimeout: the budget ran out.
        """
        fixed = [z3.Not(self._var(goal))]
        if not self._check(list(self._ind.values()) + fixed):
            return None
        return frozenset(self._minimise(fixed))

    def conflict(self, clashes: Iterable[Clash], guards: dict[str, str]) -> tuple[frozenset[str], list[Clash]] | None:
        """A minimal inconsistent set of statements (a minimal unsat core).

        Args:
            clashes: pairs that must not both hold (integrity constraints).
            guards: attribute -> id of the declaration that makes it functional; such
                a pair's constraint only applies while that declaration is in.

        Returns:
            (statement ids of the core, the clashes the core violates), or None when
            the statements are consistent.

        Raises:
            SolverTimeout: the budget ran out.
        """
        tags: list[z3.BoolRef] = []
        tagged: dict[int, Clash] = {}
        for n, clash in enumerate(clashes):
            l1, l2, attr = clash
            tag = z3.Bool(f"c!{n}", self._ctx)
            parts = [z3.Not(tag), z3.Not(self._var(l1)), z3.Not(self._var(l2))]
            if attr is not None and attr in guards:
                parts.append(z3.Not(self.indicator(guards[attr])))
            self._solver.add(z3.Or(parts))
            tags.append(tag)
            tagged[tag.get_id()] = clash
        if not self._check(list(self._ind.values()) + tags):
            return None
        core = self._minimise(tags)
        # One more check on the minimal core names the clash(es) it violates.
        self._check([self._ind[s] for s in core] + tags)
        used = [tagged[a.get_id()] for a in self._solver.unsat_core() if a.get_id() in tagged]
        return frozenset(core), used
