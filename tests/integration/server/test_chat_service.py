"""ChatService, SessionService and AuthService over a real channel."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import jwt
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dmha.auth.tokens import load_secrets
from dmha_client import errors

pytestmark = pytest.mark.integration


async def test_streaming_chat_stores_the_turn(live):
    async with live.client("alice") as c:
        stream = c.chat_stream("Hello there", max_new_tokens=8)
        deltas = [d async for d in stream]
        result = stream.result
        assert result is not None and "".join(deltas) == result.text
        reply = result.reply
        assert reply.usage.completion_tokens <= 8 and reply.finish_reason in ("stop", "length")
        assert reply.model_version == "base" and reply.request_id
        session = await c.get_session(result.session_id)
        assert [t.role for t in session.turns] == ["user", "assistant"]
        assert session.turns[0].text == "Hello there" and session.turns[1].turn_id == reply.assistant_turn_id
        again = await c.chat("And again", session_id=result.session_id, max_new_tokens=4)
        assert again.session_id == result.session_id
        assert len((await c.get_session(result.session_id)).turns) == 4
        assert [s.session_id for s in await c.list_sessions()] == [result.session_id]


async def test_cancelling_a_stream_stops_generation_and_stores_nothing(live):
    async with live.client("alice") as c:
        stream = c.chat_stream("Tell me a long story", max_new_tokens=256)
        it = stream.__aiter__()
        await anext(it)
        stream.cancel()
        with pytest.raises(errors.Cancelled):
            await anext(it)
        # The model is free again at once, and the cancelled turn was never acknowledged or stored.
        start = time.monotonic()
        done = await c.chat("quick", max_new_tokens=2)
        assert time.monotonic() - start < 30
        sessions = await c.list_sessions()
        assert [s.session_id for s in sessions] == [done.session_id]


@pytest.mark.parametrize("kind", ["none", "expired", "wrong-secret", "garbage"])
async def test_auth_failures_are_unauthenticated(live, kind):
    secret, _ = load_secrets(live.runtime.cfg.auth, live.runtime.cfg.data_dir)
    now = int(time.time())
    token = {
        "none": "",
        "expired": jwt.encode(
            {"sub": "alice", "iss": "dmha", "exp": now - 1, "roles": ["user"]}, secret, algorithm="HS256"
        ),
        "wrong-secret": jwt.encode({"sub": "alice", "iss": "dmha", "exp": now + 60}, "x" * 40, algorithm="HS256"),
        "garbage": "abc.def.ghi",
    }[kind]
    client = live.client(None)
    client.token = token
    async with client as c:
        with pytest.raises(errors.Unauthenticated) as err:
            await c.chat("hi")
        assert err.value.status == "UNAUTHENTICATED"
        with pytest.raises(errors.Unauthenticated):
            await c.list_sessions()


async def test_other_users_sessions_are_not_found(live):
    async with live.client("alice") as alice, live.client("mallory") as mallory:
        sid = (await alice.chat("my secret is 42", max_new_tokens=2)).session_id
        with pytest.raises(errors.NotFound):
            await mallory.get_session(sid)
        with pytest.raises(errors.NotFound):
            await mallory.delete_session(sid)
        # Writing into someone else's session id creates the caller's own session, never touches alice's.
        await mallory.chat("hello", session_id=sid, max_new_tokens=2)
        assert len((await alice.get_session(sid)).turns) == 2
        await alice.delete_session(sid)
        with pytest.raises(errors.NotFound):
            await alice.get_session(sid)


@pytest.mark.parametrize(
    "message, kwargs, field, needle",
    [
        ("x" * 2001, {}, "message", "limit 2000"),
        ("   ", {}, "message", "empty"),
        ("hi", {"max_new_tokens": 100000}, "options.max_new_tokens", "limit"),
        ("hi", {"temperature": 9.0}, "options.temperature", "between 0 and 2"),
    ],
)
async def test_bad_input_is_invalid_argument(live, message, kwargs, field, needle):
    async with live.client("alice") as c:
        with pytest.raises(errors.InvalidArgument) as err:
            await c.chat(message, **kwargs)
        assert err.value.field == field and needle in err.value.problem
        with pytest.raises(errors.InvalidArgument):
            await c.chat("hi", session_id="../etc/passwd")
        assert await c.list_sessions() == []  # nothing was stored


async def test_redis_killed_mid_run_is_unavailable_then_recovers(live):
    async with live.client("alice") as c:
        sid = (await c.chat("remember me", max_new_tokens=2)).session_id
        # Let the turn's background follow-up (the monitor's score log) land first: a
        # write that meets a dead Redis revives it, and this test wants it dead a while.
        await asyncio.sleep(0.5)
        os.kill(live.runtime.redis.pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with pytest.raises(errors.Unavailable) as err:
            await c.chat("are you there?", session_id=sid, max_new_tokens=2)
        assert err.value.status == "UNAVAILABLE"
    # No restart of DMHA: the embedded redis-server is revived and the AOF kept the session.
    async with live.client("alice", retry=5) as c:
        reply = await c.chat("back?", session_id=sid, max_new_tokens=2)
        assert reply.session_id == sid
        assert [t.text for t in (await c.get_session(sid)).turns][0] == "remember me"


async def test_issue_token_with_admin_key(live):
    _, api_key = load_secrets(live.runtime.cfg.auth, live.runtime.cfg.data_dir)
    async with live.client(None) as c:
        with pytest.raises(errors.Unauthenticated):
            await c.issue_token("wrong", "bob")
        c.token = await c.issue_token(api_key, "bob", ("user",))
        assert (await c.chat("hi", max_new_tokens=2)).text is not None
        with pytest.raises(errors.InvalidArgument, match="roles"):
            await c.issue_token(api_key, "bob", ("root",))


async def test_rate_limit_is_resource_exhausted(tmp_path, tiny_model_dir):
    from tests.integration.conftest import integration_config, start_live_server

    cfg = integration_config(tmp_path, tiny_model_dir, limits={"rate_limit_per_minute": 2})
    async for live in start_live_server(cfg):
        async with live.client("alice") as c:
            await c.list_sessions()
            await c.list_sessions()
            with pytest.raises(errors.ResourceExhausted, match="rate limit"):
                await c.list_sessions()


async def test_health_and_reflection_need_no_token(live):
    async with live.client(None) as c:
        assert await c.health() == "SERVING"
    async with grpc.aio.insecure_channel(live.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for resp in stub.ServerReflectionInfo(requests()):
            names = {s.name for s in resp.list_services_response.service}
            break
    assert {"dmha.v1.ChatService", "dmha.v1.SessionService", "dmha.v1.AuthService", "grpc.health.v1.Health"} <= names
