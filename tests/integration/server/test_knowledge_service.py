"""KnowledgeService and the KB's part in chat, over a real channel and real Redis."""

from __future__ import annotations

import pytest

from dmha_client import errors

pytestmark = pytest.mark.integration

SMART = """rule: if ?x.quiet = true and ?x.cold = true then ?x.smart = true
fact: bob.quiet = true
fact: bob.cold = true
"""


async def test_tell_ask_explain_retract(live):
    async with live.client("alice") as c:
        told = await c.kb_tell(SMART)
        assert len(told.accepted) == 3 and not told.rejected
        ans = await c.kb_ask("bob.smart = true")
        assert ans.verdict == "ENTAILED" and len(ans.support) == 3
        assert (await c.kb_ask("bob.tall = true")).verdict == "UNKNOWN"
        clash = await c.kb_tell("deny: bob.smart = true [confidence=0.5]")
        assert not clash.accepted and len(clash.rejected) == 1
        core = {s.text.split(" [")[0].strip() for s in clash.rejected[0].conflicts_with}
        assert "fact: bob.quiet = true" in core and "fact: bob.cold = true" in core
        rid = clash.rejected[0].statement.id
        assert [r.statement.id for r in await c.kb_conflicts()] == [rid]
        exp = await c.kb_explain(rid)
        assert exp.statement.status == "rejected" and exp.related
        cold = next(s for s in told.accepted if s.text.startswith("fact: bob.cold"))
        await c.kb_retract(cold.id)
        assert (await c.kb_ask("bob.smart = true")).verdict == "UNKNOWN"
        assert {s.kind for s in await c.kb_list()} >= {"fact", "rule"}


async def test_kb_errors_and_isolation(live):
    async with live.client("alice") as alice, live.client("mallory") as mallory:
        sid = (await alice.kb_tell("fact: alice.pin = 1234")).accepted[0].id
        with pytest.raises(errors.InvalidArgument, match="line 1, column"):
            await alice.kb_tell("fact: bob.age == 3")
        assert (await mallory.kb_ask("alice.pin = 1234")).verdict == "UNKNOWN"
        with pytest.raises(errors.NotFound):
            await mallory.kb_explain(sid)
        with pytest.raises(errors.NotFound):
            await mallory.kb_retract(sid)
        with pytest.raises(errors.PermissionDenied):
            await alice.kb_tell("fact: sky.color = blue", scope="global")
    async with live.client("root", "admin") as admin, live.client("bob") as bob:
        await admin.kb_tell("fact: sky.color = blue", scope="global")
        assert (await bob.kb_ask("sky.color = blue")).verdict == "ENTAILED"


async def test_statements_in_chat_are_told_and_reported(live):
    async with live.client("alice") as c:
        first = await c.chat("fact: carol.age = 30\nHow old is Carol?", max_new_tokens=4)
        reply = first.reply
        assert [s.status for s in reply.statements] == ["accepted"]
        assert "1 statement(s) accepted" in reply.notice
        second = await c.chat("fact: carol.age = 31 [confidence=0.4]", session_id=first.session_id)
        st = second.reply.statements[0]
        assert st.status == "rejected" and any("carol.age = 30" in x for x in st.conflicts_with)
        assert "rejected" in second.text  # a statements-only message is answered by the notice
        assert (await c.kb_ask("carol.age = 30")).verdict == "ENTAILED"
        turns = (await c.get_session(first.session_id)).turns
        assert turns[0].text.startswith("fact: carol.age = 30")  # the message is stored whole
