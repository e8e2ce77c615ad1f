"""``dmha report`` arguments: --since forms, the user a token names."""

from __future__ import annotations

import pytest

from dmha_server.report_cmd import _subject, parse_since


def test_forms():
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2024-05-01") == 1714521600.0
    assert parse_since("2024-05-01T02:00:00+02:00") == 1714521600.0
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("36h", now=200_000.0) == 200_000.0 - 36 * 3600
    assert parse_since("") == 0.0


def test_bad_value_names_the_flag():
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday")


def test_the_reported_user_is_the_tokens_subject():
    from dmha.auth.tokens import Authenticator
    from dmha.config import AuthConfig

    jwt, _ = Authenticator(AuthConfig(), "s" * 32, "k").issue("alice", ("admin",))
    assert _subject(jwt) == "alice"
    with pytest.raises(SystemExit, match="JWT"):
        _subject("not-a-jwt")


def test_reproduce_defaults_to_five_seeds_when_given_without_a_number():
    from dmha_cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["report", "--out", "r"]).reproduce == 0
    assert parser.parse_args(["report", "--out", "r", "--reproduce"]).reproduce == 5
    assert parser.parse_args(["report", "--out", "r", "--reproduce", "2", "--facts", "3"]).facts == 3
