"""Parser for knowledge-base statement lines (the contract in DESIGN.md).

A hand-written cursor scanner rather than a tokenizer: lexing is context-sensitive
(``source=`` takes a bare URL, ``not`` is a keyword only before a term) and every
error must name the exact 1-based column where parsing stopped.

    fact: <term>.<attribute> = <value>   [confidence=0.9, scope=user, source=...]
    deny: <term>.<attribute> = <value>   [...]
    rule: [<name>:] if <literal> (and <literal>)* then <literal>   [...]
    attr: <attribute> functional | multi

Identifiers and keywords are case-insensitive (stored lower-cased); quoted strings
keep their case. Lines without a prefix are chat text; blank lines and lines that
start with ``#`` are skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dmha.errors import StatementSyntaxError
from dmha.knowledge.model import (
    AttrDecl,
    Fact,
    Literal,
    Rule,
    Scope,
    Statement,
    StatementOptions,
    format_value,
    quote,
)

__all__ = ["ParseResult", "is_statement_line", "parse", "parse_statement"]

_PREFIX_RE = re.compile(r"\s*(fact|deny|rule|attr)\s*:", re.IGNORECASE)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_BARE_SOURCE_RE = re.compile(r"[^,\]#]+")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Statements and chat text found in a block of text.

    Attributes:
        statements: the parsed statements, in order.
        statement_lines: the 1-based line number of each statement.
        chat_lines: lines without a statement prefix, left to chat.
    """

    statements: tuple[Statement, ...]
    statement_lines: tuple[int, ...]
    chat_lines: tuple[str, ...]


def is_statement_line(line: str) -> bool:
    """True when ``line`` starts with ``fact:``, ``deny:``, ``rule:`` or ``attr:``."""
    return _PREFIX_RE.match(line) is not None


def parse(text: str) -> ParseResult:
    """Parse every statement line of ``text``; other lines are chat.

    Args:
        text: one statement per line, possibly mixed with chat text.

    Returns:
        The statements (all-or-nothing) and the chat lines.

    Raises:
        StatementSyntaxError: the first malformed statement line, with its line and
            column; nothing is returned for the other lines.
    """
    statements: list[Statement] = []
    numbers: list[int] = []
    chat: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not is_statement_line(line):
            chat.append(line)
            continue
        statements.append(_Cursor(line, number).statement())
        numbers.append(number)
    return ParseResult(tuple(statements), tuple(numbers), tuple(chat))


def parse_statement(line: str, *, line_number: int = 1) -> Statement:
    """Parse one statement line.

    Args:
        line: e.g. ``"fact: bob.age = 30 [confidence=0.8]"``.
        line_number: reported in errors when the line came from a larger text.

    Returns:
        A :class:`Fact`, :class:`Rule` or :class:`AttrDecl`.

    Raises:
        StatementSyntaxError: the line is malformed or has no statement prefix.
    """
    if not is_statement_line(line):
        col = len(line) - len(line.lstrip()) + 1
        raise StatementSyntaxError(line_number, col, "fact:, deny:, rule: or attr:", line)
    return _Cursor(line, line_number).statement()


def parse_literal(text: str, *, allow_variables: bool = False) -> Literal:
    """Parse ``[not] entity.attribute = value`` on its own (used by ``ask``).

    Args:
        text: the literal, optionally prefixed by ``fact:`` or ``deny:``.
        allow_variables: accept ``?x`` terms.

    Returns:
        The literal.

    Raises:
        StatementSyntaxError: malformed text.
    """
    if is_statement_line(text):
        stmt = parse_statement(text)
        if not isinstance(stmt, Fact):
            raise StatementSyntaxError(1, 1, "a literal, fact: or deny:", text)
        return stmt.literal
    cur = _Cursor(text, 1)
    lit = cur.literal(allow_variables=allow_variables)
    cur.end()
    return lit


class _Cursor:
    """Scanner over one line; ``pos`` is a 0-based index into ``line``."""

    def __init__(self, line: str, number: int) -> None:
        self.line = line
        self.number = number
        self.pos = 0

    # -- low level -------------------------------------------------------------
    def fail(self, expected: str, pos: int | None = None) -> StatementSyntaxError:
        where = self.pos if pos is None else pos
        return StatementSyntaxError(self.number, where + 1, expected, self.line)

    def skip_ws(self) -> None:
        while self.pos < len(self.line) and self.line[self.pos] in " \t":
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.line) or self.line[self.pos] == "#"

    def peek(self) -> str:
        self.skip_ws()
        return self.line[self.pos] if self.pos < len(self.line) else ""

    def expect(self, char: str, what: str | None = None) -> None:
        if self.peek() != char:
            raise self.fail(what or f"'{char}'")
        self.pos += 1

    def ident(self, what: str) -> str:
        self.skip_ws()
        match = _IDENT_RE.match(self.line, self.pos)
        if not match:
            raise self.fail(what)
        self.pos = match.end()
        return match.group().lower()

    def peek_word(self) -> str:
        self.skip_ws()
        match = _IDENT_RE.match(self.line, self.pos)
        return match.group().lower() if match else ""

    def keyword(self, word: str) -> None:
        if self.peek_word() != word:
            raise self.fail(f"'{word}'")
        self.pos += len(word)

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("end of line")

    # -- grammar ---------------------------------------------------------------
    def statement(self) -> Statement:
        prefix = _PREFIX_RE.match(self.line)
        assert prefix is not None  # callers check is_statement_line first
        self.pos = prefix.end()
        word = prefix.group(1).lower()
        if word == "attr":
            attribute = self.ident("an attribute identifier")
            kind = self.peek_word()
            if kind not in ("functional", "multi"):
                raise self.fail("'functional' or 'multi'")
            self.pos += len(kind)
            opts = self.options()
            self.end()
            return AttrDecl(attribute, kind, **opts)
        if word == "rule":
            return self.rule()
        lit = self.literal(allow_variables=False, allow_not=False)
        opts = self.options()
        self.end()
        return Fact(lit.entity, lit.attribute, lit.value, word == "deny", **opts)

    def rule(self) -> Rule:
        name = None
        self.skip_ws()
        save = self.pos
        first = self.peek_word()
        if first and first != "if":
            self.pos += len(first)
            if self.peek() == ":":
                self.pos += 1
                name = first
            else:
                self.pos = save
                raise self.fail("'if' or a rule name followed by ':'")
        self.keyword("if")
        body = [self.literal(allow_variables=True)]
        while self.peek_word() == "and":
            self.pos += 3
            body.append(self.literal(allow_variables=True))
        if self.peek_word() != "then":
            raise self.fail("'and' or 'then'")
        self.pos += 4
        head_pos = self.pos
        head = self.literal(allow_variables=True)
        bound = {t for lit in body for t in (lit.entity, lit.value) if t.startswith("?")}
        for term in (head.entity, head.value):
            if term.startswith("?") and term not in bound:
                found = re.compile(re.escape(term) + r"\b", re.IGNORECASE).search(self.line, head_pos)
                where = found.start() if found else head_pos
                raise self.fail(f"a variable bound in the rule body (not {term})", where)
        opts = self.options()
        self.end()
        return Rule(name, tuple(body), head, **opts)

    def literal(self, *, allow_variables: bool, allow_not: bool = True) -> Literal:
        negated = False
        word = self.peek_word()
        if word == "not" and allow_not:
            after = self.pos + 3
            if after < len(self.line) and self.line[after] in " \t":
                self.pos = after
                negated = True
        entity = self.term(
            allow_variables, "an entity identifier or ?variable" if allow_variables else "an entity identifier"
        )
        self.expect(".", "'.' then an attribute")
        attribute = self.ident("an attribute identifier")
        self.expect("=", "'='")
        value = self.value(allow_variables)
        return Literal(entity, attribute, value, negated)

    def term(self, allow_variables: bool, what: str) -> str:
        self.skip_ws()
        if self.peek() == "?":
            if not allow_variables:
                raise self.fail("an entity identifier (variables are only allowed in rules)")
            self.pos += 1
            return "?" + self.ident("a variable name after '?'")
        start = self.pos
        name = self.ident(what)
        if name in ("true", "false"):
            raise self.fail("an entity identifier, not a boolean", start)
        return name

    def value(self, allow_variables: bool) -> str:
        ch = self.peek()
        start = self.pos
        if ch == "?":
            if not allow_variables:
                raise self.fail("a value (variables are only allowed in rules)")
            self.pos += 1
            return "?" + self.ident("a variable name after '?'")
        if ch == '"':
            return quote(self.string())
        match = _NUMBER_RE.match(self.line, self.pos)
        if match:
            self.pos = match.end()
            text = match.group()
            if any(c in text for c in ".eE"):
                number = float(text)
                if not math.isfinite(number):
                    raise self.fail("a finite number", start)
                return format_value(number)
            return str(int(text))
        if _IDENT_RE.match(self.line, self.pos):
            return self.ident("a value")  # true/false stay as their keyword text
        raise self.fail('a value: identifier, number, "string", true or false')

    def string(self) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.line):
            ch = self.line[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                nxt = self.line[self.pos + 1 : self.pos + 2]
                if nxt not in _ESCAPES:
                    raise self.fail('an escape: \\" \\\\ \\n or \\t')
                out.append(_ESCAPES[nxt])
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1
        raise self.fail("a closing '\"'", start)

    def options(self) -> StatementOptions:
        opts: StatementOptions = {}
        if self.peek() != "[":
            return opts
        self.pos += 1
        while True:
            self.skip_ws()
            key_pos = self.pos
            key = self.ident("an option: confidence, scope or source")
            if key in opts:
                raise self.fail(f"each option once ({key} repeated)", key_pos)
            self.expect("=", "'='")
            if key == "confidence":
                self.skip_ws()
                match = _NUMBER_RE.match(self.line, self.pos)
                number = float(match.group()) if match else -1.0
                if not match or not 0.0 <= number <= 1.0:
                    raise self.fail("a confidence between 0 and 1")
                self.pos = match.end()
                opts["confidence"] = number
            elif key == "scope":
                self.skip_ws()
                word_pos = self.pos
                word = self.ident("session, user or global")
                if word not in ("session", "user", "global"):
                    raise self.fail("session, user or global", word_pos)
                opts["scope"] = Scope(word)
            elif key == "source":
                opts["source"] = self.source()
            else:
                raise self.fail("an option: confidence, scope or source", key_pos)
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("]", "',' or ']'")
            return opts

    def source(self) -> str:
        if self.peek() == '"':
            return self.string()
        match = _BARE_SOURCE_RE.match(self.line, self.pos)
        text = match.group().strip() if match else ""
        if match is None or not text:
            raise self.fail('a source: text or "quoted string"')
        self.pos = match.end()
        return text
