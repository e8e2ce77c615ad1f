"""Property: the incremental, per-cone reasoner agrees with one global Z3 solve.

The oracle grounds every rule over every constant of a small universe, adds the
integrity constraints (a literal and its negation; two values of a functional
attribute) and asks Z3 directly. It shares only the definition of a normalised
literal with the code under test.
"""

from __future__ import annotations

import itertools

import z3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmha.knowledge import (
    AttrDecl,
    Fact,
    KnowledgeBank,
    KnowledgeBase,
    Literal,
    Rule,
    Status,
    Verdict,
)
from dmha.knowledge.model import Statement, is_entity, normalize

ENTITIES = ["a", "b", "c"]
ATTRS = ["p", "q"]
VALUES = ["a", "b", "1", "true", "false"]
UNIVERSE = sorted(set(ENTITIES) | set(VALUES))
_CTX = z3.Context()  # one context for every oracle: creating contexts is slow


# Skewed towards variables and booleans so that rules fire and statements clash
# (uniform choices almost never derive anything).
RULE_ENTITIES = ["?x", "?x", "?x", "?y", "a"]
RULE_VALUES = ["true", "true", "true", "false", "a", "?y", "?y", "?x"]
FACT_VALUES = ["true", "true", "true", "false", "a", "b", "1"]
NEGATED = st.sampled_from([False, False, True])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    def lit(terms_e: list[str], terms_v: list[str]) -> Literal:
        return Literal(
            draw(st.sampled_from(terms_e)), draw(st.sampled_from(ATTRS)), draw(st.sampled_from(terms_v)), draw(NEGATED)
        )

    body = tuple(lit(RULE_ENTITIES, RULE_VALUES) for _ in range(draw(st.integers(1, 2))))
    bound = sorted({t for b in body for t in (b.entity, b.value) if t.startswith("?")})
    head = lit(ENTITIES + bound * 3, VALUES + bound * 2)
    return Rule(None, body, head, confidence=draw(st.sampled_from([0.5, 1.0])))


def _bool_lit(entity: str) -> st.SearchStrategy[Literal]:
    return st.builds(
        Literal, st.just(entity), st.sampled_from(ATTRS), st.sampled_from(["true", "true", "true", "false"]), NEGATED
    )


# Boolean rules over one entity fire on most KBs and clash through negation.
bool_rules = st.builds(
    lambda body, head, conf: Rule(None, tuple(body), head, confidence=conf),
    st.lists(_bool_lit("?x"), min_size=1, max_size=2),
    _bool_lit("?x"),
    st.sampled_from([0.5, 1.0]),
)
# Joins across two entities through a relation (entity-valued attribute).
join_rules = st.builds(
    lambda rel, lit, head, conf: Rule(None, (Literal("?x", rel, "?y"), lit), head, confidence=conf),
    st.sampled_from(ATTRS),
    _bool_lit("?y"),
    st.one_of(_bool_lit("?x"), st.builds(Literal, st.just("?y"), st.sampled_from(ATTRS), st.just("?x"), NEGATED)),
    st.sampled_from([0.5, 1.0]),
)

facts = st.builds(
    Fact,
    st.sampled_from(ENTITIES[:2]),
    st.sampled_from(ATTRS),
    st.sampled_from(FACT_VALUES),
    NEGATED,
    confidence=st.sampled_from([0.5, 1.0]),
)
decls = st.builds(
    AttrDecl, st.sampled_from(ATTRS), st.sampled_from(["functional", "multi"]), confidence=st.sampled_from([0.5, 1.0])
)
# one_of() does not weight repeated branches, so draw the kind first: half facts.
_KINDS = {"fact": facts, "rule": rules(), "bool": bool_rules, "join": join_rules, "attr": decls}
statement = st.sampled_from(["fact"] * 5 + ["rule", "bool", "bool", "join", "attr"]).flatmap(_KINDS.__getitem__)
statements = st.lists(statement, min_size=2, max_size=10)


class Oracle:
    """A global Z3 model of a set of statements over the whole small universe."""

    def __init__(self, stmts: list[Statement], background: list[AttrDecl] = ()) -> None:
        self.ctx = _CTX
        self.solver = z3.Solver(ctx=self.ctx)
        self.vars: dict[tuple, z3.BoolRef] = {}
        self.cache: dict[tuple, bool] = {}
        decl_list = sorted(
            [*background, *(s for s in stmts if isinstance(s, AttrDecl))], key=lambda d: d.created_at or 0.0
        )
        self.kinds = {d.attribute: d.kind for d in decl_list}
        for stmt in stmts:
            if isinstance(stmt, Fact):
                self.solver.add(self.var(stmt.literal.key()))
            elif isinstance(stmt, Rule):
                self._ground(stmt)
        for e, a in itertools.product(ENTITIES, ATTRS):
            for v in UNIVERSE:
                lit = normalize(e, a, v, True)
                self.solver.add(z3.Not(z3.And(self.var(lit), self.var(_comp(lit)))))
            if self.kinds.get(a, "functional") == "functional":
                values = {normalize(e, a, v, True) for v in UNIVERSE}
                self.solver.add(z3.AtMost(*(self.var(x) for x in sorted(values)), 1))

    def var(self, lit: tuple) -> z3.BoolRef:
        if lit not in self.vars:
            self.vars[lit] = z3.Bool(repr(lit), self.ctx)
        return self.vars[lit]

    def _ground(self, rule: Rule) -> None:
        names = sorted({t for lit in (*rule.body, rule.head) for t in (lit.entity, lit.value) if t.startswith("?")})
        for values in itertools.product(UNIVERSE, repeat=len(names)):
            env = dict(zip(names, values, strict=True))
            ground = [
                Literal(env.get(x.entity, x.entity), x.attribute, env.get(x.value, x.value), x.negated)
                for x in (*rule.body, rule.head)
            ]
            if not all(is_entity(g.entity) for g in ground):
                continue
            *body, head = (self.var(g.key()) for g in ground)
            self.solver.add(z3.Implies(z3.And(body), head))

    def consistent(self) -> bool:
        return self.solver.check() == z3.sat

    def holds(self, lit: tuple) -> bool:
        if lit not in self.cache:
            self.cache[lit] = self.solver.check(z3.Not(self.var(lit))) == z3.unsat
        return self.cache[lit]

    def verdict(self, e: str, a: str, v: str, pos: bool) -> Verdict:
        lit = normalize(e, a, v, pos)
        if self.holds(lit):
            return Verdict.ENTAILED
        if self.holds(_comp(lit)):
            return Verdict.CONTRADICTED
        if self.kinds.get(a, "functional") == "functional":
            # Every way of writing the literal: `not x.a = true` is also `x.a = false`.
            shown = [(lit[2], lit[3])] + ([("false", not lit[3])] if lit[2] == "true" else [])
            for value, positive in shown:
                if not positive:
                    continue
                for other in UNIVERSE:
                    o = normalize(e, a, other, True)
                    if other != value and o not in (lit, _comp(lit)) and self.holds(o):
                        return Verdict.CONTRADICTED
        return Verdict.UNKNOWN


def _comp(lit: tuple) -> tuple:
    return (*lit[:3], not lit[3])


def _check_core(kb: KnowledgeBase, core_ids: list[str]) -> None:
    by_id = {r.id: r.statement for r in kb.statements()}
    core = [by_id[i] for i in core_ids]
    background = [
        r.statement
        for r in kb.statements(status=Status.ACCEPTED)
        if isinstance(r.statement, AttrDecl) and r.id not in core_ids
    ]
    assert not Oracle(core, background).consistent(), "core is consistent"
    for i in range(len(core)):
        rest = core[:i] + core[i + 1 :]
        assert Oracle(rest, background).consistent(), f"core not minimal without {core[i]}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements)
def test_agrees_with_global_solve(stmts: list[Statement]) -> None:
    kb = KnowledgeBase()
    for stmt in stmts:
        result = kb.tell(stmt.text())
        for conflict in (*result.rejected, *result.demoted):
            if not conflict.reason.startswith("timeout"):
                _check_core(kb, [conflict.record.id, *conflict.record.conflicts_with])
    accepted = [r.statement for r in kb.statements(status=Status.ACCEPTED)]
    oracle = Oracle(accepted)
    assert oracle.consistent()
    support_oracles: dict[tuple[str, ...], Oracle] = {}
    decls = [s for s in accepted if isinstance(s, AttrDecl)]
    for e, a, v in itertools.product(ENTITIES, ATTRS, UNIVERSE):
        for pos in (True, False):
            got = kb.ask(Literal(e, a, v, not pos))
            assert got.verdict is oracle.verdict(e, a, v, pos), f"{got.query}: kb {got.verdict} ({got.reason})"
            if got.verdict is not Verdict.UNKNOWN:
                # The support alone yields the same verdict (it is a real support).
                key = tuple(r.id for r in got.support)
                if key not in support_oracles:
                    # Declarations are context, not support: a support alone may clash
                    # under the default (functional) kinds.
                    support_oracles[key] = Oracle([r.statement for r in got.support], decls)
                assert support_oracles[key].verdict(e, a, v, pos) is got.verdict


def _agrees(kb: KnowledgeBase) -> None:
    oracle = Oracle([r.statement for r in kb.statements(status=Status.ACCEPTED)])
    assert oracle.consistent()
    for e, a, v in itertools.product(ENTITIES, ATTRS, UNIVERSE):
        for pos in (True, False):
            got = kb.ask(Literal(e, a, v, not pos))
            assert got.verdict is oracle.verdict(e, a, v, pos), f"{got.query}: kb {got.verdict}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["user", "session"]), st.sampled_from(["user", "session"]), statement),
        min_size=2,
        max_size=8,
    )
)
def test_views_sharing_statements_stay_consistent(ops: list[tuple[str, str, Statement]]) -> None:
    # A user view and a session view of one user write in turn (user or session
    # scope); each picks up the other's changes incrementally and must always equal
    # a global solve over the statements it shows as accepted.
    bank = KnowledgeBank()
    views = {"user": bank.for_user("u"), "session": bank.for_user("u", "s")}
    for writer, scope, stmt in ops:
        if writer == "user":
            scope = "user"
        views[writer].tell(stmt.text(), scope=scope)
    for kb in views.values():
        _agrees(kb)
