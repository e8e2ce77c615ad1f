"""The knowledge base one caller talks to: tell, ask, retract, explain.

A :class:`KnowledgeBase` is a *view*: the global statements, one user's statements
and optionally one session's, reasoned over together and kept consistent. With no
arguments it is a private in-memory knowledge base, usable as a plain library::

    kb = KnowledgeBase()
    kb.tell("rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true\\n"
            "fact: bob.quiet = true\\nfact: bob.cold = true")
    kb.ask("bob.smart = true").verdict          # Verdict.ENTAILED

Several views share namespaces (every user sees ``global``; a user's sessions share
the user's statements); :mod:`dmha.knowledge.view` keeps each one in step with the
store and consistent whatever other writers changed.

Calls block (Z3, store I/O): the server runs them through its executor. A view is
serialised by its own lock and owns its own Z3 context, so views run in parallel.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from dmha.config import KnowledgeConfig
from dmha.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from dmha.ids import check_id
from dmha.knowledge.budget import WorkBudget, WorkQuota
from dmha.knowledge.model import (
    Answer,
    AttrDecl,
    Conflict,
    Explanation,
    Fact,
    Lit,
    Literal,
    Rule,
    Scope,
    Statement,
    StatementRecord,
    Status,
    TellResult,
)
from dmha.knowledge.parser import parse, parse_literal
from dmha.knowledge.store import (
    GLOBAL_NS,
    InMemoryStore,
    StatementStore,
    StoreBatch,
    namespace_for,
)
from dmha.knowledge.view import View

__all__ = ["ADMIN_ROLE", "KnowledgeBase"]

ADMIN_ROLE = "admin"
_SCOPE_NAMES = {"g": "global", "u": "user", "s": "session"}
_EXPLAIN_LIMIT = 20


def _literal(lit: Lit) -> Literal:
    return Literal(lit[0], lit[1], lit[2], not lit[3])


class KnowledgeBase:
    """Facts and rules of one view, checked by Z3 (see the module docstring).

    Args:
        config: limits and the solver budget; defaults to ``KnowledgeConfig()``.
        store: where statements persist; default a fresh :class:`InMemoryStore`.
        user_id: the owner of ``user``-scope statements.
        session_id: the session whose ``session``-scope statements are visible.
        role: ``"admin"`` may write and retract ``global`` statements.

    Raises:
        RedisUnavailable: the store could not be read (on first use).
    """

    def __init__(
        self,
        config: KnowledgeConfig | None = None,
        *,
        store: StatementStore | None = None,
        user_id: str = "local",
        session_id: str | None = None,
        role: str = "user",
    ) -> None:
        self._view = View(
            store if store is not None else InMemoryStore(), config or KnowledgeConfig(), user_id, session_id
        )
        self._role = role
        self._quota: WorkQuota | None = None

    @classmethod
    def _attach(cls, view: View, role: str, quota: WorkQuota | None = None) -> KnowledgeBase:
        kb = cls.__new__(cls)
        kb._view = view
        kb._role = role
        kb._quota = quota
        return kb

    @property
    def user_id(self) -> str:
        """The user this view belongs to."""
        return self._view.user_id

    @property
    def session_id(self) -> str | None:
        """The session this view includes, if any."""
        return self._view.session_id

    @property
    def role(self) -> str:
        """The caller's role."""
        return self._role

    # -- public API ------------------------------------------------------------------
    def tell(
        self, text: str, *, scope: Scope | str | None = None, source: str | None = None, session_id: str | None = None
    ) -> TellResult:
        """Add the statement lines of ``text``; other lines are returned as chat.

        Each statement is checked in order. A statement that conflicts is settled by
        the policy (confidence, then newer, then narrower scope): either it is
        rejected, or the weakest statements of each minimal conflict core are demoted.

        Args:
            text: statement lines (``fact:``/``deny:``/``rule:``/``attr:``) and chat.
            scope: default scope of statements without ``[scope=...]``; default user.
            source: default provenance of statements without ``[source=...]``.
            session_id: must be None or this view's session (use
                ``KnowledgeBank.for_user(user, session)`` for another session).

        Returns:
            Accepted records (with ids), rejected and demoted statements with their
            minimal conflict cores and reasons, and the chat lines.

        Raises:
            StatementSyntaxError: a malformed line (nothing is added).
            InvalidArgument: text too large, unknown scope, session scope without a
                session, or a foreign session_id.
            PermissionDenied: global scope without the admin role.
            ResourceExhausted: the user's statements would exceed
                ``max_statements_per_user``, the user spent ``max_work_seconds_per_minute``,
                a rule has more than
                ``max_rule_conditions`` conditions, a namespace would hold more than
                ``max_rules_per_scope`` rules, or deriving the consequences takes more
                than ``max_derivations`` steps or ``max_operation_seconds`` (nothing is
                added; the message names the limit).
            Cancelled: the request was cancelled while deriving (nothing is added).
            RedisUnavailable: the store failed (nothing is added).
        """
        view = self._view
        size = len(text.encode("utf-8"))
        if size > view.config.max_statement_bytes:
            raise InvalidArgument("text", f"is {size} bytes; limit {view.config.max_statement_bytes}")
        if session_id is not None and session_id != view.session_id:
            raise InvalidArgument("session_id", "differs from this knowledge base's session")
        default_scope = _scope(scope)
        parsed = parse(text)
        stamped = []
        for stmt in parsed.statements:
            sc = stmt.scope or default_scope or Scope.USER
            if sc is Scope.GLOBAL and self._role != ADMIN_ROLE:
                raise PermissionDenied("only the admin role may write global statements")
            if sc is Scope.SESSION and view.session_id is None:
                raise InvalidArgument("scope", "session scope needs a session_id")
            if isinstance(stmt, Rule) and len(stmt.body) > view.config.max_rule_conditions:
                raise ResourceExhausted(
                    f"a rule has {len(stmt.body)} conditions; limit {view.config.max_rule_conditions} "
                    "(knowledge.max_rule_conditions)"
                )
            stamped.append(replace(stmt, scope=sc, source=stmt.source if stmt.source is not None else source))
        if self._quota is not None and stamped:
            self._quota.check(view.user_id)
        # Wall time, not CPU time: the thread and the lock are held for all of it, and
        # pure-Python derivation holds the interpreter lock against every other thread.
        began = time.monotonic()
        try:
            return self._tell_locked(stamped, parsed.chat_lines)
        finally:
            if self._quota is not None and stamped:
                self._quota.spend(view.user_id, time.monotonic() - began)

    def _tell_locked(self, stamped: list[Statement], chat_lines: tuple[str, ...]) -> TellResult:
        view = self._view
        with view.lock:
            self._view.sync()
            self._check_capacity(stamped)
            self._check_rules(stamped)
            batch = StoreBatch()
            accepted: dict[str, StatementRecord] = {}
            rejected: list[Conflict] = []
            demoted: list[Conflict] = []
            # The budget bounds the time this lock is held; a Tell that exceeds it leaves
            # the in-memory view half-updated, so stale_on_error makes the next call reload.
            with self._view.stale_on_error(), _budgeted(view):
                for stmt in stamped:
                    stmt = replace(stmt, created_at=view.tick())
                    ns = namespace_for(stmt.scope or Scope.USER, view.user_id, view.session_id)
                    rec = StatementRecord(secrets.token_hex(8), stmt, namespace=ns)
                    view.records[rec.id] = rec
                    view.counts[ns] += 1
                    batch.put_records.append(rec)
                    admission = view.reasoner.add(rec.id, stmt)
                    if admission.accepted:
                        accepted[rec.id] = rec
                    else:
                        assert admission.loss is not None
                        rejected.append(self._view.lose(admission.loss, batch))
                    for loss in admission.demoted:
                        accepted.pop(loss.sid, None)
                        demoted.append(self._view.lose(loss, batch))
                self._view.commit(batch)
        return TellResult(tuple(accepted.values()), tuple(rejected), tuple(demoted), chat_lines)

    def ask(self, query: str | Literal) -> Answer:
        """Decide a ground literal: ENTAILED, CONTRADICTED or UNKNOWN.

        Args:
            query: ``"[not] entity.attribute = value"`` (``fact:``/``deny:`` prefixes
                accepted) or a :class:`Literal`.

        Returns:
            The verdict, a minimal set of supporting statements, and a reason
            (``"timeout"`` when the solver budget ran out — never a guess).

        Raises:
            StatementSyntaxError: the query does not parse.
            InvalidArgument: the query has variables.
            RedisUnavailable: the store failed.
        """
        lit = parse_literal(query) if isinstance(query, str) else query
        if not lit.is_ground:
            raise InvalidArgument("query", "must be ground (no ?variables)")
        with self._view.lock:
            self._view.sync()
            verdict, ids, reason = self._view.reasoner.answer(lit.key())
            support = tuple(
                sorted(
                    (self._view.shown(self._view.records[i]) for i in ids), key=lambda r: r.statement.created_at or 0.0
                )
            )
        return Answer(lit, verdict, support, reason)

    def retract(self, statement_id: str) -> StatementRecord:
        """Remove a statement (accepted or rejected) for good.

        Statements it had beaten stay rejected. Retracting an ``attr:`` declaration
        can make an attribute functional again; the policy then settles any clash.

        Args:
            statement_id: an id from :meth:`tell` or :meth:`statements`.

        Returns:
            The removed record.

        Raises:
            InvalidArgument: a malformed statement id.
            NotFound: no such statement in this view (another user's ids included).
            PermissionDenied: a global statement without the admin role.
            DeadlineExceeded: settling the clashes it causes exceeded the solver budget.
            RedisUnavailable: the store failed.
        """
        check_id(statement_id, "statement_id")
        view = self._view
        with view.lock:
            self._view.sync()
            rec = view.records.get(statement_id)
            if rec is None:
                raise NotFound(f"statement {statement_id!r} not found")
            if rec.namespace == GLOBAL_NS and self._role != ADMIN_ROLE:
                raise PermissionDenied("only the admin role may retract global statements")
            shown = self._view.shown(rec)
            batch = StoreBatch()
            with self._view.stale_on_error():
                losses = view.reasoner.remove(rec.id) if rec.id in view.reasoner else ()
                batch.delete_records.append((rec.namespace, rec.id))
                del view.records[rec.id]
                view.counts[rec.namespace] -= 1
                held = view.overrides.pop(rec.id, None)
                if held is not None:
                    batch.delete_overrides.append((held[0], rec.id))
                for loss in losses:
                    self._view.lose(loss, batch)
                self._view.commit(batch)
        return shown

    def statements(
        self, *, status: Status | str | None = None, scope: Scope | str | None = None
    ) -> list[StatementRecord]:
        """Every statement of this view, oldest first, as this view sees it.

        Args:
            status: only accepted or only rejected ones.
            scope: only one scope.

        Returns:
            The records (a broader-scope statement overridden here shows as rejected).

        Raises:
            InvalidArgument: unknown status or scope.
            RedisUnavailable: the store failed.
        """
        want_status = _status(status)
        want_scope = _scope(scope)
        with self._view.lock:
            self._view.sync()
            out = [self._view.shown(r) for r in self._view.records.values()]
        return sorted(
            (
                r
                for r in out
                if (want_status is None or r.status is want_status) and (want_scope is None or r.scope is want_scope)
            ),
            key=lambda r: (r.statement.created_at or 0.0, r.id),
        )

    def conflicts(self) -> list[Conflict]:
        """Rejected statements with their reasons and minimal conflict cores.

        Raises:
            RedisUnavailable: the store failed.
        """
        with self._view.lock:
            return [self._view.conflict(r) for r in self.statements(status=Status.REJECTED)]

    def explain(self, statement_id: str) -> Explanation:
        """Why a statement stands where it does.

        Args:
            statement_id: an id from :meth:`tell` or :meth:`statements`.

        Returns:
            For a rejected statement its reason and conflict core; for an accepted
            one a summary and (up to 20) literals it helps derive.

        Raises:
            InvalidArgument: a malformed statement id.
            NotFound: no such statement in this view.
            RedisUnavailable: the store failed.
        """
        check_id(statement_id, "statement_id")
        view = self._view
        with view.lock:
            self._view.sync()
            rec = view.records.get(statement_id)
            if rec is None:
                raise NotFound(f"statement {statement_id!r} not found")
            rec = self._view.shown(rec)
            if rec.status is Status.REJECTED:
                conflict = self._view.conflict(rec)
                return Explanation(rec, conflict.reason, conflict.core)
            stmt = rec.statement
            grounder = view.reasoner.grounder
            if isinstance(stmt, Fact):
                lits = grounder.dependents(stmt.literal.key(), _EXPLAIN_LIMIT)
                reason = "accepted fact"
            elif isinstance(stmt, AttrDecl):
                lits = []
                effective = view.reasoner.kind(stmt.attribute) == stmt.kind
                reason = f"accepted declaration ({'in effect' if effective else 'superseded'})"
            else:
                lits = grounder.rule_heads(rec.id, _EXPLAIN_LIMIT)
                reason = "accepted rule" if lits else "accepted rule (has not fired yet)"
            return Explanation(rec, reason, (), tuple(_literal(x) for x in sorted(lits)))

    # -- vocabulary (used by the claim extractor and prompt building) ----------------
    def attributes(self) -> set[str]:
        """Attributes with a derivable literal or an ``attr:`` declaration."""
        with self._view.lock:
            self._view.sync()
            reasoner = self._view.reasoner
            return reasoner.grounder.attributes() | reasoner.declared_attributes()

    def knows_entity(self, name: str) -> bool:
        """True when some derivable literal is about entity ``name`` (case-insensitive)."""
        return bool(self.known_entities([name]))

    def known_entities(self, names: Iterable[str]) -> set[str]:
        """The lower-cased ``names`` that some derivable literal is about (one store
        round trip for the lot)."""
        with self._view.lock:
            self._view.sync()
            grounder = self._view.reasoner.grounder
            return {n.lower() for n in names if grounder.has_entity(n.lower())}

    def attributes_having(self, value: str) -> list[str]:
        """Attributes for which some entity has the canonical ``value`` derivable."""
        with self._view.lock:
            self._view.sync()
            grounder = self._view.reasoner.grounder
            return sorted(a for a in grounder.attributes() if grounder.has_value(a, value))

    def literals_about(self, entity: str, limit: int = 50) -> list[Literal]:
        """Derivable literals (stated or derived) about ``entity``, sorted, capped.

        Args:
            entity: the entity name (case-insensitive).
            limit: at most this many.

        Returns:
            The literals.
        """
        with self._view.lock:
            self._view.sync()
            lits = sorted(self._view.reasoner.grounder.about(entity.lower()))
        return [_literal(x) for x in lits[:limit]]

    # -- internals -------------------------------------------------------------------
    def _check_rules(self, stamped: list[Statement]) -> None:
        view = self._view
        limit = view.config.max_rules_per_scope
        new: dict[str, int] = {}
        for stmt in stamped:
            if isinstance(stmt, Rule):
                ns = namespace_for(stmt.scope or Scope.USER, view.user_id, view.session_id)
                new[ns] = new.get(ns, 0) + 1
        for ns, count in new.items():
            have = sum(1 for r in view.records.values() if r.namespace == ns and isinstance(r.statement, Rule))
            if have + count > limit:
                raise ResourceExhausted(
                    f"{_SCOPE_NAMES[ns[0]]} scope would hold {have + count} rules; limit {limit} "
                    "(knowledge.max_rules_per_scope)"
                )

    def _check_capacity(self, stamped: list[Statement]) -> None:
        view = self._view
        limit = view.config.max_statements_per_user
        new_global = sum(1 for s in stamped if s.scope is Scope.GLOBAL)
        own = sum(n for ns, n in view.counts.items() if ns != GLOBAL_NS)
        if own + len(stamped) - new_global > limit:
            raise ResourceExhausted(
                f"knowledge base would hold {own + len(stamped) - new_global} statements; limit {limit}"
            )
        if new_global and view.counts[GLOBAL_NS] + new_global > limit:
            raise ResourceExhausted(f"global knowledge would exceed {limit} statements")


def _scope(value: Scope | str | None) -> Scope | None:
    if value is None or isinstance(value, Scope):
        return value
    try:
        return Scope(value.lower())
    except ValueError:
        raise InvalidArgument("scope", f"{value!r} is not session, user or global") from None


def _status(value: Status | str | None) -> Status | None:
    if value is None or isinstance(value, Status):
        return value
    try:
        return Status(value.lower())
    except ValueError:
        raise InvalidArgument("status", f"{value!r} is not accepted or rejected") from None


@contextmanager
def _budgeted(view: View) -> Iterator[None]:
    """Charge the block's derivations to a fresh budget (sync and reload run unbudgeted:
    they replay statements that each passed a budget when told)."""
    view.reasoner.grounder.budget = WorkBudget(view.config.max_derivations, view.config.max_operation_seconds)
    try:
        yield
    finally:
        view.reasoner.grounder.budget = None
