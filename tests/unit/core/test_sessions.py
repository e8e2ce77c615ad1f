"""Sessions: the caller's own sessions only; other users' ids do not exist for them."""

from __future__ import annotations

import pytest
from core_fakes import DictWorkingMemory

from dmha.auth.tokens import Principal
from dmha.errors import InvalidArgument, NotFound
from dmha.sessions import Sessions
from dmha.turn import Turn

ALICE = Principal("alice", frozenset({"user"}))
MALLORY = Principal("mallory", frozenset({"user"}))


def sessions() -> tuple[Sessions, DictWorkingMemory]:
    wm = DictWorkingMemory()
    wm.append([Turn("t1", "alice", "s1", "user", "hi", 1.0), Turn("t2", "alice", "s1", "assistant", "hello", 1.0)])
    wm.append([Turn("t3", "alice", "s2", "user", "later", 2.0)])
    return Sessions(wm), wm


async def test_list_get_delete_own_sessions():
    s, wm = sessions()
    assert [i.session_id for i in await s.list(ALICE)] == ["s2", "s1"]
    assert [t.text for t in await s.get(ALICE, "s1")] == ["hi", "hello"]
    await s.delete(ALICE, "s1")
    assert [i.session_id for i in await s.list(ALICE)] == ["s2"]
    with pytest.raises(NotFound):
        await s.get(ALICE, "s1")


async def test_other_users_sessions_are_not_found_and_untouched():
    s, wm = sessions()
    assert await s.list(MALLORY) == []
    with pytest.raises(NotFound):
        await s.get(MALLORY, "s1")
    with pytest.raises(NotFound):
        await s.delete(MALLORY, "s1")
    assert len(wm.all_turns("alice", "s1")) == 2


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 129, "s 1"])
async def test_malformed_ids_are_invalid_argument(bad):
    s, _ = sessions()
    with pytest.raises(InvalidArgument, match="session_id"):
        await s.get(ALICE, bad)
    with pytest.raises(InvalidArgument, match="session_id"):
        await s.delete(ALICE, bad)
