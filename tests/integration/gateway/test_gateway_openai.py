"""The official ``openai`` client against a real gateway and a real server (tiny model)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.integration.gateway.conftest import http

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello there"}]


def oa(gateway, token: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=60)


async def test_completion_matches_a_direct_grpc_turn_and_carries_usage_and_extras(gateway):
    async with oa(gateway, gateway.token("alice")) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="dmha", messages=HELLO, max_tokens=8, temperature=0, seed=3, extra_headers={"X-Request-Id": "trace-7"}
        )
        completion = raw.parse()
        text = completion.choices[0].message.content
        async with gateway.server.client("alice") as sdk:
            direct = await sdk.chat("Hello there", max_new_tokens=8, temperature=0, seed=3)
        # Same model, same prompt, fresh sessions both: the gateway passes the turn through unchanged.
        assert text == direct.text and text
        assert completion.object == "chat.completion" and completion.model == "dmha"
        assert completion.system_fingerprint == "dmha:base"
        assert completion.choices[0].finish_reason in ("stop", "length")
        usage = completion.usage
        assert usage.completion_tokens == direct.reply.usage.completion_tokens <= 8
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
        dmha = completion.model_extra["dmha"]
        assert raw.headers["x-dmha-session"] == dmha["session_id"]
        assert dmha["model_version"] == "base" and dmha["assistant_turn_id"]
        # The caller's request id reaches the server (its logs) and comes back.
        assert dmha["request_id"] == "trace-7" == raw.headers["x-request-id"]
        assert {"memories", "statements", "claims", "monitor_events", "warnings", "notice"} <= dmha.keys()


async def test_stream_chunks_add_up_to_the_stored_reply_in_the_named_session(gateway):
    token = gateway.token("alice")
    async with oa(gateway, token) as client:
        session = "conv-1"
        first = await client.chat.completions.create(model="dmha", messages=HELLO, user=session, max_tokens=4)
        assert first.model_extra["dmha"]["session_id"] == session
        stream = await client.chat.completions.create(
            model="dmha",
            messages=[*HELLO, {"role": "assistant", "content": first.choices[0].message.content}, HELLO[0]],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=12,
            extra_headers={"X-DMHA-Session": session},
        )
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        dmha = final.model_extra["dmha"]
        assert dmha["text"] == text and dmha["corrected"] is False and dmha["session_id"] == session
        # Earlier messages were not re-sent (the session holds them), and nothing says otherwise.
        assert not any("earlier messages" in w for w in dmha["warnings"])
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 12
        async with gateway.server.client("alice") as sdk:
            turns = (await sdk.get_session(session)).turns
        assert [t.role for t in turns] == ["user", "assistant"] * 2
        assert turns[-1].text == text


async def test_stop_sequences_seed_and_temperature_reach_the_model(gateway):
    async with oa(gateway, gateway.token("alice")) as client:
        full = (await client.chat.completions.create(model="dmha", messages=HELLO, max_tokens=16)).choices[0]
        text = full.message.content
        assert len(text) > 6, text
        stop = text[3:6]
        cut = await client.chat.completions.create(model="dmha", messages=HELLO, max_tokens=16, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
        streamed = await client.chat.completions.create(
            model="dmha", messages=HELLO, max_tokens=16, stop=stop, stream=True
        )
        assert (
            "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices]) == text[: text.find(stop)]
        )
        sampled = [
            (await client.chat.completions.create(model="dmha", messages=HELLO, max_tokens=8, temperature=1.5, seed=s))
            .choices[0]
            .message.content
            for s in (11, 11, 12)
        ]
        assert sampled[0] == sampled[1]  # same seed, same sample


async def test_models_list_the_alias_and_the_live_version(gateway):
    async with oa(gateway, gateway.token("alice")) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["dmha", "dmha:base"]
        assert models.data[0].model_extra["dmha"]["version"] == "base"
        assert (await client.models.retrieve("dmha:base")).id == "dmha:base"
        pinned = await client.chat.completions.create(model="dmha:base", messages=HELLO, max_tokens=2)
        assert pinned.system_fingerprint == "dmha:base"
        with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
            await client.models.retrieve("gpt-4o")


async def test_the_blocking_client_works_too(gateway):
    token = gateway.token("bob")

    def call() -> str:
        with OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=60) as client:
            return client.chat.completions.create(model="dmha", messages=HELLO, max_tokens=4).choices[0].message.content

    assert await asyncio.to_thread(call)


async def test_statements_in_a_message_come_back_with_their_verdicts(gateway):
    async with oa(gateway, gateway.token("carol")) as client:
        told = await client.chat.completions.create(
            model="dmha", user="kb", messages=[{"role": "user", "content": "fact: bob.age = 30"}]
        )
        statements = told.model_extra["dmha"]["statements"]
        assert [s["status"] for s in statements] == ["accepted"]
        assert statements[0]["statement"].startswith("fact: bob.age = 30")
        clash = await client.chat.completions.create(
            model="dmha", user="kb", messages=[{"role": "user", "content": "fact: bob.age = 31 [confidence=0.4]"}]
        )
        rejected = clash.model_extra["dmha"]["statements"][0]
        assert rejected["status"] == "rejected" and any("30" in c for c in rejected["conflicts_with"])


async def test_page_api_lists_reads_and_isolates_sessions(gateway):
    alice, bob = gateway.token("alice"), gateway.token("bob")
    async with oa(gateway, alice) as client:
        await client.chat.completions.create(model="dmha", messages=HELLO, user="mine", max_tokens=2)
        listed = (await http("GET", f"{gateway.url}/dmha/v1/sessions", token=alice)).json()
        assert [s["session_id"] for s in listed["sessions"]] == ["mine"]
        turns = (await http("GET", f"{gateway.url}/dmha/v1/sessions/mine", token=alice)).json()["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"] and turns[0]["text"] == "Hello there"
        # Another user's session id is NOT_FOUND, never revealed.
        other = await http("GET", f"{gateway.url}/dmha/v1/sessions/mine", token=bob)
        assert other.status == 404 and other.json()["error"]["type"] == "invalid_request_error"
        assert (await http("DELETE", f"{gateway.url}/dmha/v1/sessions/mine", token=alice)).status == 204
        assert (await http("GET", f"{gateway.url}/dmha/v1/sessions/mine", token=alice)).status == 404
        health = await http("GET", f"{gateway.url}/healthz")
        assert health.status == 200 and health.json() == {"gateway": "ok", "server": "SERVING"}
        metrics = await http("GET", f"{gateway.url}/metrics")
        assert b'dmha_gateway_requests_total{route="list_sessions",status="200"}' in metrics.body
