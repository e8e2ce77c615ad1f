"""Incremental grounding: the least model of the accepted statements, kept up to date.

Rules are never grounded over every constant. Only *fired* instances are
materialised (all body literals derivable), found by semi-naive forward chaining
from each newly derivable literal through indexes, so a new fact touches only what
it can reach. Removal uses DRed (over-delete what depended on the removed support,
then re-derive what still has support), which is correct for cyclic rules too.

Instances that never fire cannot influence derivability or consistency of a Horn
theory (the least model satisfies them), so the fired instances plus the facts are
the whole relevant ground program. The Z3 layer (:mod:`solver`) decides entailment
and extracts cores over the *cone* of a query — the literals and instances it can
reach backwards — which is the smallest component on which a global solve's answer
depends.

Literals here are the normalised tuples of :data:`model.Lit`. Indexes are kept over
*presentations*: ``not x.a = true`` is also visible as ``x.a = false`` so that a rule
pattern ``?x.a = ?v`` binds ``?v = false`` exactly as the boolean rule demands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dmha.knowledge.budget import WorkBudget
from dmha.knowledge.model import Lit, Rule, is_entity, is_variable, normalize

__all__ = ["Clash", "Cone", "Grounder", "Inst"]

# (rule statement id, head, body) — one fired ground instance of a rule.
Inst = tuple[str, Lit, tuple[Lit, ...]]
# (literal, literal, attribute whose functionality forbids the pair, or None for l/not l).
Clash = tuple[Lit, Lit, str | None]
_Pattern = tuple[str, str, str, bool]


def presentations(lit: Lit) -> tuple[Lit, ...]:
    """The ways a normalised literal can be written (booleans have two)."""
    e, a, v, pos = lit
    if v == "true":
        return (lit, (e, a, "false", not pos))
    return (lit,)


class _CompiledRule:
    __slots__ = ("sid", "body", "head", "plans", "full_plan")

    def __init__(self, sid: str, rule: Rule) -> None:
        self.sid = sid
        self.body: tuple[_Pattern, ...] = tuple(
            (lit.entity, lit.attribute, lit.value, not lit.negated) for lit in rule.body
        )
        h = rule.head
        self.head: _Pattern = (h.entity, h.attribute, h.value, not h.negated)
        # One join order per triggering position, chosen once: bound entity first (the
        # (attribute, entity) index is the most selective), then bound value.
        self.plans = tuple(self._order({i}, _vars(self.body[i])) for i in range(len(self.body)))
        start = max(range(len(self.body)), key=lambda i: _score(self.body[i], set()))
        self.full_plan = (start, *self._order({start}, _vars(self.body[start])))

    def _order(self, done: set[int], bound: set[str]) -> tuple[int, ...]:
        bound = set(bound)
        order: list[int] = []
        rest = [i for i in range(len(self.body)) if i not in done]
        while rest:
            best = max(rest, key=lambda i: (_score(self.body[i], bound), -i))
            rest.remove(best)
            order.append(best)
            bound |= _vars(self.body[best])
        return tuple(order)


def _vars(pat: _Pattern) -> set[str]:
    return {t for t in (pat[0], pat[2]) if is_variable(t)}


def _score(pat: _Pattern, bound: set[str]) -> int:
    e_known = not is_variable(pat[0]) or pat[0] in bound
    v_known = not is_variable(pat[2]) or pat[2] in bound
    return 2 * e_known + v_known


@dataclass(slots=True)
class Cone:
    """The part of the ground program a set of literals depends on.

    Attributes:
        lits: every literal reached backwards from the targets.
        facts: for each reached literal, the fact statements that state it.
        insts: every fired rule instance concluding a reached literal.
    """

    lits: set[Lit] = field(default_factory=set)
    facts: dict[Lit, frozenset[str]] = field(default_factory=dict)
    insts: list[Inst] = field(default_factory=list)

    def statement_ids(self) -> set[str]:
        """Ids of the fact and rule statements the cone uses."""
        ids = {inst[0] for inst in self.insts}
        for sids in self.facts.values():
            ids.update(sids)
        return ids


class Grounder:
    """Derivable literals, their justifications, and indexes for joins.

    Not thread-safe; the knowledge base serialises calls.
    """

    def __init__(self) -> None:
        self._live: set[Lit] = set()
        self._facts: dict[Lit, set[str]] = {}
        self._insts: dict[Lit, set[Inst]] = {}
        self._uses: dict[Lit, set[Inst]] = {}
        self._by_rule: dict[str, set[Inst]] = {}
        self._rules: dict[str, _CompiledRule] = {}
        self._triggers: dict[tuple[str, bool], list[tuple[_CompiledRule, int]]] = {}
        self._ae: dict[tuple[str, bool, str], set[str]] = {}
        self._av: dict[tuple[str, bool, str], set[str]] = {}
        self._a: dict[tuple[str, bool], set[tuple[str, str]]] = {}
        self._by_entity: dict[str, set[Lit]] = {}
        self.touched: set[Lit] = set()
        """Literals whose justifications changed since the owner last cleared this."""
        self.budget: WorkBudget | None = None
        """Charged per join step and fired instance while set (bounds one operation)."""

    # -- queries ---------------------------------------------------------------
    def is_live(self, lit: Lit) -> bool:
        """True when ``lit`` is derivable."""
        return lit in self._live

    def __len__(self) -> int:
        return len(self._live)

    def values(self, entity: str, attribute: str, positive: bool = True) -> set[str]:
        """Derivable values of ``entity.attribute`` (as presented, so booleans included)."""
        return set(self._ae.get((attribute, positive, entity), ()))

    def has_entity(self, entity: str) -> bool:
        """True when some derivable literal is about ``entity``."""
        return entity in self._by_entity

    def about(self, entity: str) -> set[Lit]:
        """Derivable literals whose entity is ``entity``."""
        return set(self._by_entity.get(entity, ()))

    def attributes(self) -> set[str]:
        """Attributes with at least one derivable literal."""
        return {a for (a, _pos) in self._a}

    def has_value(self, attribute: str, value: str) -> bool:
        """True when some entity has ``attribute = value`` derivable (as presented)."""
        return bool(self._av.get((attribute, True, value)))

    def attribute_lits(self, attribute: str) -> list[Lit]:
        """Every derivable positive presentation of ``attribute``, normalised."""
        pairs = self._a.get((attribute, True), ())
        return [normalize(e, attribute, v, True) for e, v in pairs]

    def rule_heads(self, sid: str, limit: int) -> list[Lit]:
        """Distinct heads of the fired instances of rule ``sid`` (at most ``limit``)."""
        out: dict[Lit, None] = {}
        for inst in self._by_rule.get(sid, ()):
            out[inst[1]] = None
            if len(out) >= limit:
                break
        return list(out)

    def dependents(self, lit: Lit, limit: int) -> list[Lit]:
        """Distinct heads of instances that use ``lit`` in their body (at most ``limit``)."""
        out: dict[Lit, None] = {}
        for inst in self._uses.get(lit, ()):
            out[inst[1]] = None
            if len(out) >= limit:
                break
        return list(out)

    def cone(self, targets: Iterable[Lit], budget: Callable[[], None] | None = None) -> Cone:
        """Everything the targets' derivations can use, walking justifications backwards.

        Args:
            targets: literals to explain (non-derivable ones contribute nothing).
            budget: called every few hundred steps; raises to abort a huge walk.

        Returns:
            The cone.
        """
        cone = Cone()
        stack = [t for t in targets if t in self._live]
        steps = 0
        while stack:
            lit = stack.pop()
            if lit in cone.lits:
                continue
            cone.lits.add(lit)
            sids = self._facts.get(lit)
            if sids:
                cone.facts[lit] = frozenset(sids)
            for inst in self._insts.get(lit, ()):
                cone.insts.append(inst)
                stack.extend(b for b in inst[2] if b not in cone.lits)
            steps += 1
            if budget is not None and steps % 256 == 0:
                budget()
        return cone

    def clashes(self, lits: Iterable[Lit], functional: Callable[[str], bool]) -> set[Clash]:
        """Inconsistencies involving any of ``lits`` among derivable literals.

        Args:
            lits: literals to check (typically those that just became derivable).
            functional: whether an attribute allows at most one value per entity.

        Returns:
            Pairs (l1, l2, attr) with l1 < l2; attr is None for a literal and its
            negation, else the functional attribute both values belong to.
        """
        found: set[Clash] = set()
        for lit in lits:
            if lit not in self._live:
                continue
            e, a, v, pos = lit
            comp = (e, a, v, not pos)
            if comp in self._live:
                found.add((*sorted((lit, comp)), None))  # type: ignore[arg-type]
            if not functional(a):
                continue
            for pres in presentations(lit):
                if not pres[3]:
                    continue
                others = self._ae.get((a, True, e), ())
                if len(others) < 2:
                    continue
                for v2 in others:
                    other = normalize(e, a, v2, True)
                    if v2 != pres[2] and other != lit and other != comp:
                        found.add((*sorted((lit, other)), a))  # type: ignore[arg-type]
        return found

    # -- changes ---------------------------------------------------------------
    def add_fact(self, sid: str, lit: Lit) -> list[Lit]:
        """Add fact ``sid`` stating ``lit``; returns the literals that became derivable."""
        self._facts.setdefault(lit, set()).add(sid)
        self.touched.add(lit)
        delta: list[Lit] = []
        if lit not in self._live:
            self._activate(lit)
            delta.append(lit)
            self._propagate([lit], delta)
        return delta

    def remove_fact(self, sid: str, lit: Lit) -> list[Lit]:
        """Remove fact ``sid``; returns the literals that stopped being derivable."""
        sids = self._facts.get(lit)
        if sids is None or sid not in sids:
            return []
        sids.discard(sid)
        self.touched.add(lit)
        if sids:
            return []
        del self._facts[lit]
        return self._retract_from([lit])

    def add_rule(self, sid: str, rule: Rule) -> list[Lit]:
        """Add rule ``sid`` and fire all its instances; returns newly derivable literals."""
        compiled = _CompiledRule(sid, rule)
        self._rules[sid] = compiled
        self._by_rule.setdefault(sid, set())
        for i, pat in enumerate(compiled.body):
            self._triggers.setdefault((pat[1], pat[3]), []).append((compiled, i))
        found: list[Inst] = []
        self._join(compiled, compiled.full_plan, 0, {}, [None] * len(compiled.body), found)
        delta: list[Lit] = []
        agenda: list[Lit] = []
        for inst in found:
            self._record(inst, agenda, delta)
        self._propagate(agenda, delta)
        return delta

    def remove_rule(self, sid: str) -> list[Lit]:
        """Remove rule ``sid`` and its instances; returns literals no longer derivable."""
        compiled = self._rules.pop(sid, None)
        if compiled is None:
            return []
        for i, pat in enumerate(compiled.body):
            key = (pat[1], pat[3])
            self._triggers[key] = [t for t in self._triggers[key] if t != (compiled, i)]
            if not self._triggers[key]:
                del self._triggers[key]
        heads = set()
        for inst in list(self._by_rule.pop(sid, ())):
            self._drop_inst(inst)
            heads.add(inst[1])
        return self._retract_from(list(heads))

    # -- internals -------------------------------------------------------------
    def _activate(self, lit: Lit) -> None:
        self._live.add(lit)
        self._by_entity.setdefault(lit[0], set()).add(lit)
        for e, a, v, pos in presentations(lit):
            self._ae.setdefault((a, pos, e), set()).add(v)
            self._av.setdefault((a, pos, v), set()).add(e)
            self._a.setdefault((a, pos), set()).add((e, v))

    def _deactivate(self, lit: Lit) -> None:
        self._live.discard(lit)
        _discard(self._by_entity, lit[0], lit)
        for e, a, v, pos in presentations(lit):
            _discard(self._ae, (a, pos, e), v)
            _discard(self._av, (a, pos, v), e)
            _discard(self._a, (a, pos), (e, v))

    def _propagate(self, agenda: list[Lit], delta: list[Lit]) -> None:
        while agenda:
            lit = agenda.pop()
            found: list[Inst] = []
            for pres in presentations(lit):
                for compiled, i in self._triggers.get((pres[1], pres[3]), ()):
                    binding = _unify(compiled.body[i], pres)
                    if binding is None:
                        continue
                    body: list[Lit | None] = [None] * len(compiled.body)
                    body[i] = lit
                    self._join(compiled, compiled.plans[i], 0, binding, body, found)
            for inst in found:
                self._record(inst, agenda, delta)

    def _join(
        self,
        rule: _CompiledRule,
        plan: tuple[int, ...],
        depth: int,
        binding: dict[str, str],
        body: list[Lit | None],
        out: list[Inst],
    ) -> None:
        if self.budget is not None:
            self.budget.charge()
        if depth == len(plan):
            head = _instantiate(rule.head, binding)
            if head is not None:
                out.append((rule.sid, head, tuple(body)))  # type: ignore[arg-type]
            return
        index = plan[depth]
        pat = rule.body[index]
        for e, v, new_vars in self._matches(pat, binding):
            body[index] = normalize(e, pat[1], v, pat[3])
            self._join(rule, plan, depth + 1, binding, body, out)
            for var in new_vars:
                del binding[var]
        body[index] = None

    def _matches(self, pat: _Pattern, binding: dict[str, str]) -> Iterator[tuple[str, str, tuple[str, ...]]]:
        e_t, a, v_t, pos = pat
        e = binding.get(e_t) if is_variable(e_t) else e_t
        v = binding.get(v_t) if is_variable(v_t) else v_t
        if e is not None and v is not None:
            pairs: Iterable[tuple[str, str]] = [(e, v)] if v in self._ae.get((a, pos, e), ()) else []
        elif e is not None:
            pairs = [(e, x) for x in self._ae.get((a, pos, e), ())]
        elif v is not None:
            pairs = [(x, v) for x in self._av.get((a, pos, v), ())]
        else:
            pairs = list(self._a.get((a, pos), ()))
        for me, mv in pairs:
            new: list[str] = []
            if e is None:
                binding[e_t] = me
                new.append(e_t)
            if v is None:
                if v_t == e_t and binding[v_t] != mv:
                    for var in new:
                        del binding[var]
                    continue
                if v_t not in binding:
                    binding[v_t] = mv
                    new.append(v_t)
            yield me, mv, tuple(new)

    def _record(self, inst: Inst, agenda: list[Lit], delta: list[Lit]) -> None:
        rid, head, body = inst
        insts = self._insts.setdefault(head, set())
        if inst in insts:
            return
        insts.add(inst)
        self._by_rule[rid].add(inst)
        for lit in body:
            self._uses.setdefault(lit, set()).add(inst)
        self.touched.add(head)
        if head not in self._live:
            self._activate(head)
            agenda.append(head)
            delta.append(head)

    def _drop_inst(self, inst: Inst) -> None:
        rid, head, body = inst
        _discard(self._insts, head, inst)
        by_rule = self._by_rule.get(rid)
        if by_rule is not None:
            by_rule.discard(inst)
        for lit in body:
            _discard(self._uses, lit, inst)
        self.touched.add(head)

    def _retract_from(self, seeds: list[Lit]) -> list[Lit]:
        # DRed: over-delete everything that may depend on the seeds. A literal that
        # still has a fact is well-founded, so the walk stops there.
        over: set[Lit] = set()
        stack = [s for s in seeds if s in self._live and s not in self._facts]
        while stack:
            lit = stack.pop()
            if lit in over:
                continue
            over.add(lit)
            for inst in list(self._uses.get(lit, ())):
                self._drop_inst(inst)
                head = inst[1]
                if head not in over and head in self._live and head not in self._facts:
                    stack.append(head)
        for lit in over:
            self._deactivate(lit)
            self.touched.add(lit)
        # Re-derive: instances left on an over-deleted literal have bodies outside the
        # over-deleted set, hence derivable; forward chaining then rebuilds the rest.
        agenda = [lit for lit in over if self._insts.get(lit)]
        for lit in agenda:
            self._activate(lit)
        self._propagate(list(agenda), [])
        return [lit for lit in over if lit not in self._live]


def _discard(index: dict, key: object, item: object) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(item)
        if not bucket:
            del index[key]


def _unify(pat: _Pattern, lit: Lit) -> dict[str, str] | None:
    binding: dict[str, str] = {}
    for term, const in ((pat[0], lit[0]), (pat[2], lit[2])):
        if is_variable(term):
            if binding.get(term, const) != const:
                return None
            binding[term] = const
        elif term != const:
            return None
    return binding


def _instantiate(pat: _Pattern, binding: dict[str, str]) -> Lit | None:
    e = binding[pat[0]] if is_variable(pat[0]) else pat[0]
    if not is_entity(e):
        return None  # ``?x`` bound to a number/string/boolean cannot name an entity
    v = binding[pat[2]] if is_variable(pat[2]) else pat[2]
    return normalize(e, pat[1], v, pat[3])
