"""One id rule for every kind of id, and Redis keys that cannot be forged."""

from __future__ import annotations

import pytest

from dmha.errors import InvalidArgument
from dmha.ids import MAX_ID_LENGTH, check_id, is_valid_id, new_session_id, redis_key


@pytest.mark.parametrize("value", ["alice", "a.b-c_d", "alice@example.com", "x" * MAX_ID_LENGTH, "0" * 32])
def test_accepts_the_id_shape(value):
    assert check_id(value, "user_id") == value and is_valid_id(value)


@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_ID_LENGTH + 1), "a:b", "a b", "a\nb", 'o"brien', "a\\b", "é", "a/b", "*"],
)
def test_rejects_anything_else_naming_the_field(value):
    with pytest.raises(InvalidArgument) as err:
        check_id(value, "session_id")
    assert err.value.field == "session_id" and "1-128 characters" in str(err.value)
    assert not is_valid_id(value)


def test_non_strings_are_never_ids():
    assert not is_valid_id(None) and not is_valid_id(12)


def test_new_session_ids_are_valid_and_distinct():
    a, b = new_session_id(), new_session_id()
    assert a != b and is_valid_id(a)


def test_redis_key_joins_checked_ids():
    assert redis_key("dmha:wm:turns", "alice@x.org", "s1") == "dmha:wm:turns:alice@x.org:s1"
    with pytest.raises(InvalidArgument):
        redis_key("dmha:wm:turns", "alice:s2", "s1")  # would collide with another user's key


def test_every_entry_point_uses_the_same_rule():
    """The knowledge bank, the chat pipeline's session check and token minting agree."""
    from dmha.knowledge.bank import KnowledgeBank

    bank = KnowledgeBank()
    bank.for_user("alice@example.com", "s.1-2")  # accepted everywhere
    for bad in ("s:1", "x" * 200, "s 1"):
        with pytest.raises(InvalidArgument, match="session_id"):
            bank.for_user("alice", bad)
