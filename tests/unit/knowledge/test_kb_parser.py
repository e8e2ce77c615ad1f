"""Parser: the statement contract of DESIGN.md, and errors with line and column."""

from __future__ import annotations

import pytest

from dmha.errors import InvalidArgument, StatementSyntaxError
from dmha.knowledge import (
    AttrDecl,
    Fact,
    Literal,
    Rule,
    Scope,
    parse,
    parse_literal,
    parse_statement,
)

X, V = "?x", "?v"

PARSES = [
    ("fact: Bob.Age = 30", Fact("bob", "age", "30")),
    ("  FACT : bob.age=30", Fact("bob", "age", "30")),
    ("deny: bob.smart = true", Fact("bob", "smart", "true", negated=True)),
    ('fact: bob.city = "New York"', Fact("bob", "city", '"New York"')),
    ('fact: bob.quote = "say \\"hi\\""', Fact("bob", "quote", '"say \\"hi\\""')),
    ("fact: x.n = -2.50", Fact("x", "n", "-2.5")),
    ("fact: x.n = 3.0", Fact("x", "n", "3")),
    ("fact: x.n = 1e3", Fact("x", "n", "1000")),
    ("fact: x.b = FALSE", Fact("x", "b", "false")),
    ("fact: x.a = Paris", Fact("x", "a", "paris")),
    (
        "fact: x.a = 1 [confidence=0.9, scope=session, source=http://a.b/c?d=1]",
        Fact("x", "a", "1", confidence=0.9, scope=Scope.SESSION, source="http://a.b/c?d=1"),
    ),
    ('fact: x.a = 1 [source="a, b", confidence=1]  # trailing comment', Fact("x", "a", "1", source="a, b")),
    ("fact: x.a = 1 [scope=GLOBAL]", Fact("x", "a", "1", scope=Scope.GLOBAL)),
    (
        "rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true",
        Rule(None, (Literal(X, "quiet", "true"), Literal(X, "cold", "true")), Literal(X, "smart", "true")),
    ),
    (
        "rule: R1: IF not ?X.a = ?V then ?x.b = ?v [confidence=0.5]",
        Rule("r1", (Literal(X, "a", V, True),), Literal(X, "b", V), confidence=0.5),
    ),
    (
        "rule: if ?x.parent = ?y and ?y.parent = ?z then ?x.grandparent = ?z",
        Rule(None, (Literal(X, "parent", "?y"), Literal("?y", "parent", "?z")), Literal(X, "grandparent", "?z")),
    ),
    (
        "rule: if alice.happy = true then not bob.sad = true",
        Rule(None, (Literal("alice", "happy", "true"),), Literal("bob", "sad", "true", True)),
    ),
    (
        "rule: if not.x = 1 then not.y = 2",  # "not" before '.' is an entity name
        Rule(None, (Literal("not", "x", "1"),), Literal("not", "y", "2")),
    ),
    ("attr: Parent MULTI", AttrDecl("parent", "multi")),
    ("attr: age functional [source=schema]", AttrDecl("age", "functional", source="schema")),
]


@pytest.mark.parametrize(("line", "expected"), PARSES)
def test_parse_statement(line: str, expected: object) -> None:
    stmt = parse_statement(line)
    assert stmt == expected
    # Rendering is the contract syntax again.
    assert parse_statement(stmt.text()) == stmt


ERRORS = [
    # line, column, words of the expectation
    ("fact: ?x.a = 1", 7, "variables are only allowed in rules"),
    ("fact: bob.a = ?v", 15, "variables are only allowed in rules"),
    ("fact: bob.a = ", 15, "a value"),
    ("fact: bob a = 1", 11, "'.'"),
    ("fact: bob. = 1", 12, "an attribute"),
    ("fact: bob.a 1", 13, "'='"),
    ("fact: bob.a = 1 extra", 17, "end of line"),
    ("fact: not bob.a = 1", 11, "'.'"),
    ("fact: true.a = 1", 7, "not a boolean"),
    ('fact: bob.a = "open', 15, "closing"),
    ('fact: bob.a = "bad \\q"', 20, "escape"),
    ("fact: bob.a = 1 [scope=world]", 24, "session, user or global"),
    ("fact: bob.a = 1 [confidence=1.5]", 29, "confidence between 0 and 1"),
    ("fact: bob.a = 1 [colour=red]", 18, "an option"),
    ("fact: bob.a = 1 [scope=user, scope=user]", 30, "once"),
    ("fact: bob.a = 1 [scope=user", 28, "',' or ']'"),
    ("fact: bob.a = 1e999", 15, "finite"),
    ("rule: if ?x.a = 1 then ?y.b = 2", 24, "bound in the rule body"),
    ("rule: if ?x.a = 1 or ?x.b = 1 then ?x.c = 1", 19, "'and' or 'then'"),
    ("rule: when ?x.a = 1 then ?x.b = 1", 7, "'if'"),
    ("rule: if then ?x.b = 1", 15, "'.'"),
    ("attr: parent maybe", 14, "'functional' or 'multi'"),
    ("attr: 9lives multi", 7, "an attribute identifier"),
]


@pytest.mark.parametrize(("line", "column", "expected"), ERRORS)
def test_syntax_errors_name_line_and_column(line: str, column: int, expected: str) -> None:
    with pytest.raises(StatementSyntaxError) as info:
        parse(f"hello\n{line}")
    err = info.value
    assert (err.line, err.column) == (2, column)
    assert expected in err.expected
    assert err.text == line
    assert isinstance(err, InvalidArgument) and err.field == "text"


def test_parse_splits_statements_and_chat_and_skips_comments() -> None:
    result = parse(
        "hi there\n\n# a comment line\nfact: a.b = 1\nrule: if ?x.b = 1 then ?x.c = 2\n"
        "I think fact: is a word\nattr: b multi"
    )
    assert [type(s) for s in result.statements] == [Fact, Rule, AttrDecl]
    assert result.statement_lines == (4, 5, 7)
    assert result.chat_lines == ("hi there", "I think fact: is a word")


def test_one_bad_line_fails_the_whole_text() -> None:
    with pytest.raises(StatementSyntaxError) as info:
        parse("fact: a.b = 1\nfact: a.b = 2\ndeny: a.b =")
    assert info.value.line == 3


def test_parse_statement_requires_a_prefix() -> None:
    with pytest.raises(StatementSyntaxError) as info:
        parse_statement("   bob.a = 1")
    assert info.value.column == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bob.smart = true", Literal("bob", "smart", "true")),
        ("not Bob.smart = TRUE", Literal("bob", "smart", "true", True)),
        ("deny: bob.smart = true", Literal("bob", "smart", "true", True)),
        ("?x.a = 1", None),
    ],
)
def test_parse_literal(text: str, expected: Literal | None) -> None:
    if expected is None:
        with pytest.raises(StatementSyntaxError):
            parse_literal(text)
    else:
        assert parse_literal(text) == expected
