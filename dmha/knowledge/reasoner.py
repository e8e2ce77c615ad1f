"""The reasoner of one view: accepted statements, consistency, verdicts.

It owns the resolution policy. When a statement makes the view inconsistent, Z3
finds a minimal conflict core; the weakest member loses — lower confidence first,
then older, then broader scope (session > user > global). If the newcomer is the
weakest it is rejected and nothing changes; otherwise the weakest old member is
demoted and the check repeats until no clash remains, so the view is consistent
after every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from dmha.errors import DeadlineExceeded
from dmha.knowledge.grounding import Clash, Grounder, presentations
from dmha.knowledge.model import (
    SCOPE_RANK,
    AttrDecl,
    Fact,
    Lit,
    Scope,
    Statement,
    Verdict,
    lit_text,
    normalize,
)
from dmha.knowledge.solver import Deadline, HornSolver, SolverTimeout

__all__ = ["Admission", "Loss", "Reasoner"]

_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class Loss:
    """A statement that lost a conflict.

    Attributes:
        sid: the losing statement.
        reason: the clash and the policy criterion that decided it.
        core: the whole minimal conflict core, ``sid`` included (empty on timeout).
    """

    sid: str
    reason: str
    core: frozenset[str]


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of :meth:`Reasoner.add`: accepted, or the newcomer's loss; demotions."""

    accepted: bool
    loss: Loss | None = None
    demoted: tuple[Loss, ...] = ()


class Reasoner:
    """Active statements over a :class:`Grounder`, decided by Z3.

    Args:
        solver_timeout_ms: the Z3 budget of one add/remove/answer call.
    """

    def __init__(self, solver_timeout_ms: int) -> None:
        self.ctx = z3.Context()
        self.grounder = Grounder()
        self._timeout = solver_timeout_ms
        self._stmts: dict[str, Statement] = {}
        self._decls: dict[str, list[tuple[float, str]]] = {}
        self._cache: dict[Lit, frozenset[str]] = {}
        self._cache_rev: dict[Lit, set[Lit]] = {}

    def __contains__(self, sid: str) -> bool:
        return sid in self._stmts

    def __len__(self) -> int:
        return len(self._stmts)

    def statement(self, sid: str) -> Statement:
        """The active statement ``sid``."""
        return self._stmts[sid]

    # -- attribute kinds ---------------------------------------------------------
    def kind(self, attribute: str) -> str:
        """``"functional"`` or ``"multi"``: the latest active declaration, default functional."""
        decls = self._decls.get(attribute)
        if not decls:
            return "functional"
        stmt = self._stmts[decls[-1][1]]
        assert isinstance(stmt, AttrDecl)
        return stmt.kind

    def declared_attributes(self) -> set[str]:
        """Attributes with an active ``attr:`` declaration."""
        return set(self._decls)

    def _functional(self, attribute: str) -> bool:
        return self.kind(attribute) == "functional"

    def _guard(self, attribute: str) -> str | None:
        # The declaration only belongs in a conflict core when the attribute would be
        # multi without it; otherwise demoting it would not resolve anything.
        decls = self._decls.get(attribute)
        if not decls or self.kind(attribute) != "functional":
            return None
        if len(decls) == 1:
            return None
        previous = self._stmts[decls[-2][1]]
        assert isinstance(previous, AttrDecl)
        return decls[-1][1] if previous.kind == "multi" else None

    # -- activation ----------------------------------------------------------------
    def _activate(self, sid: str, stmt: Statement) -> list[Lit]:
        self._stmts[sid] = stmt
        if isinstance(stmt, Fact):
            return self.grounder.add_fact(sid, stmt.literal.key())
        if isinstance(stmt, AttrDecl):
            before = self.kind(stmt.attribute)
            decls = self._decls.setdefault(stmt.attribute, [])
            decls.append((stmt.created_at or 0.0, sid))
            decls.sort()
            if before == "multi" and self.kind(stmt.attribute) == "functional":
                return self.grounder.attribute_lits(stmt.attribute)
            return []
        return self.grounder.add_rule(sid, stmt)

    def _deactivate(self, sid: str) -> list[Lit]:
        stmt = self._stmts[sid]
        if isinstance(stmt, AttrDecl):
            before = self.kind(stmt.attribute)
            decls = [d for d in self._decls[stmt.attribute] if d[1] != sid]
            if decls:
                self._decls[stmt.attribute] = decls
            else:
                del self._decls[stmt.attribute]
            del self._stmts[sid]
            if before == "multi" and self.kind(stmt.attribute) == "functional":
                return self.grounder.attribute_lits(stmt.attribute)
            return []
        del self._stmts[sid]
        if isinstance(stmt, Fact):
            self.grounder.remove_fact(sid, stmt.literal.key())
        else:
            self.grounder.remove_rule(sid)
        return []

    # -- changes ---------------------------------------------------------------------
    def add(self, sid: str, stmt: Statement) -> Admission:
        """Activate ``stmt`` under the resolution policy.

        Args:
            sid: its id.
            stmt: the statement, with confidence, scope and created_at set.

        Returns:
            Whether it was accepted, and which active statements it demoted.
        """
        lits = self._activate(sid, stmt)
        try:
            return self._resolve(sid, lits, Deadline(self._timeout))
        finally:
            self._invalidate()

    def remove(self, sid: str) -> tuple[Loss, ...]:
        """Deactivate ``sid``; if that makes an attribute functional again, restore
        consistency by demoting the weakest member of each conflict.

        Returns:
            The statements demoted to restore consistency.

        Raises:
            DeadlineExceeded: restoring consistency needed more than the solver budget;
                nothing was changed.
        """
        stmt = self._stmts[sid]
        lits = self._deactivate(sid)
        try:
            if not lits:
                return ()
            try:
                return self._resolve(None, lits, Deadline(self._timeout)).demoted
            except SolverTimeout:
                pass
            # Raised outside the handler so that no traceback keeps Z3 objects alive
            # beyond this call (they must die while the view's lock is held).
            self._activate(sid, stmt)
            raise DeadlineExceeded(
                "retracting this declaration needs conflict resolution "
                "beyond the solver budget; raise knowledge.solver_timeout_ms"
            )
        finally:
            self._invalidate()

    def _resolve(self, new: str | None, lits: list[Lit], deadline: Deadline) -> Admission:
        watch = set(lits)
        clashes = self.grounder.clashes(watch, self._functional)
        demoted: list[tuple[Loss, Statement]] = []
        while clashes:
            try:
                core, used = self._core(clashes, deadline)
            except SolverTimeout:
                if new is None:
                    self._undo(demoted)
                    raise
                self._deactivate(new)
                self._undo(demoted)
                return Admission(
                    False, Loss(new, "timeout: explaining the conflict exceeded the solver budget", frozenset())
                )
            loser = min(core, key=self._policy_key)
            loss = Loss(loser, self._reason(loser, core, used), core)
            if loser == new:
                self._deactivate(new)
                self._undo(demoted)
                return Admission(False, loss)
            demoted.append((loss, self._stmts[loser]))
            watch.update(self._deactivate(loser))
            watch.update(lit for clash in clashes for lit in clash[:2])
            clashes = self.grounder.clashes(watch, self._functional)
        return Admission(True, None, tuple(loss for loss, _ in demoted))

    def _undo(self, demoted: list[tuple[Loss, Statement]]) -> None:
        for loss, stmt in reversed(demoted):
            self._activate(loss.sid, stmt)

    def _core(self, clashes: set[Clash], deadline: Deadline) -> tuple[frozenset[str], list[Clash]]:
        lits = {lit for clash in clashes for lit in clash[:2]}
        cone = self.grounder.cone(lits, deadline.check)
        guards = {}
        for _l1, _l2, attr in clashes:
            if attr is not None and (guard := self._guard(attr)) is not None:
                guards[attr] = guard
        solver = HornSolver(self.ctx, cone, deadline, extra_ids=guards.values())
        found = solver.conflict(sorted(clashes, key=repr), guards)
        if found is None:  # the grounder and Z3 disagree: a bug, never a user error
            raise RuntimeError(f"internal: clash {sorted(clashes, key=repr)[:1]} not confirmed")
        return found

    def _policy_key(self, sid: str) -> tuple[float, float, int, str]:
        stmt = self._stmts[sid]
        return (stmt.confidence, stmt.created_at or 0.0, SCOPE_RANK[stmt.scope or Scope.USER], sid)

    def _reason(self, loser: str, core: frozenset[str], used: list[Clash]) -> str:
        others = sorted(core - {loser}, key=self._policy_key)
        clash_text = "; ".join(_describe(c) for c in used) or "inconsistent"
        if not others:
            return f"inconsistent by itself: {clash_text}"
        mine, rival = self._stmts[loser], self._stmts[others[0]]
        if mine.confidence != rival.confidence:
            why = f"lower confidence ({mine.confidence:g} < {rival.confidence:g})"
        elif (mine.created_at or 0.0) != (rival.created_at or 0.0):
            why = f"older than {others[0]}"
        elif (mine.scope or Scope.USER) != (rival.scope or Scope.USER):
            why = f"broader scope ({mine.scope} vs {rival.scope})"
        else:
            why = "tie broken by id"
        return f"conflicts with {', '.join(others)}: {clash_text}; lost on {why}"

    # -- questions -------------------------------------------------------------------
    def answer(self, lit: Lit) -> tuple[Verdict, frozenset[str], str]:
        """Decide a ground literal.

        Args:
            lit: the normalised query literal.

        Returns:
            (verdict, supporting statement ids, reason). ENTAILED when ``lit`` is
            derivable; CONTRADICTED when its negation is, or — for a functional
            attribute — another value is; UNKNOWN otherwise or on timeout.
        """
        self._invalidate()
        deadline = Deadline(self._timeout)
        grounder = self.grounder
        e, a, v, pos = lit
        comp = (e, a, v, not pos)
        try:
            if grounder.is_live(lit):
                return Verdict.ENTAILED, self._support(lit, deadline), "derivable"
            if grounder.is_live(comp):
                return (Verdict.CONTRADICTED, self._support(comp, deadline), f"{lit_text(comp)} is derivable")
            if self._functional(a):
                for pres in presentations(lit):
                    if not pres[3]:
                        continue
                    for other_v in sorted(grounder.values(e, a)):
                        other = normalize(e, a, other_v, True)
                        if other_v != pres[2] and other not in (lit, comp):
                            return (
                                Verdict.CONTRADICTED,
                                self._support(other, deadline),
                                f"{lit_text(other)} is derivable and {a} is functional",
                            )
        except SolverTimeout:
            return Verdict.UNKNOWN, frozenset(), "timeout"
        return Verdict.UNKNOWN, frozenset(), "neither it nor its negation is derivable"

    def _support(self, lit: Lit, deadline: Deadline) -> frozenset[str]:
        cached = self._cache.get(lit)
        if cached is not None:
            return cached
        cone = self.grounder.cone([lit], deadline.check)
        support = HornSolver(self.ctx, cone, deadline).support(lit)
        if support is None:  # forward chaining derived it, Z3 must agree
            raise RuntimeError(f"internal: {lit_text(lit)} derivable but not entailed")
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
            self._cache_rev.clear()
        self._cache[lit] = support
        for member in cone.lits:
            self._cache_rev.setdefault(member, set()).add(lit)
        return support

    def _invalidate(self) -> None:
        # A cached support stays valid while no literal of its cone changed its
        # justifications (the grounder records exactly those in ``touched``).
        touched = self.grounder.touched
        if touched:
            for lit in touched:
                for target in self._cache_rev.pop(lit, ()):
                    self._cache.pop(target, None)
            touched.clear()


def _describe(clash: Clash) -> str:
    l1, l2, attr = clash
    if attr is None:
        return f"{lit_text(l1)} and {lit_text(l2)} are both derivable"
    return f"{l1[0]}.{attr} is functional but both {lit_text(l1)} and {lit_text(l2)} are derivable"
