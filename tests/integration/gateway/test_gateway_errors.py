"""Bad input and outages through a real gateway: OpenAI-shaped errors, never a 500 with a traceback."""

from __future__ import annotations

import asyncio
import socket

import openai
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import integration_config, start_live_server
from tests.integration.gateway.conftest import HTTPReply, http, start_gateway, start_stack

pytestmark = pytest.mark.integration

OK_BODY = {"model": "dmha", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def assert_openai_error(reply: HTTPReply, status: int, kind: str, *, param: str | None = None, says: str = "") -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["content-type"].startswith("application/json")
    assert b"Traceback" not in reply.body and b'File "' not in reply.body
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert says.lower() in error["message"].lower(), error["message"]


async def test_bad_requests_get_openai_shaped_errors(gateway):
    url = f"{gateway.url}/v1/chat/completions"
    token = gateway.token("alice")
    user_msg = {"role": "user", "content": "Hi"}
    cases = [
        # (description, request kwargs, status, type, param, words in the message)
        ("no token", {"json_body": OK_BODY}, 401, "authentication_error", None, "missing bearer token"),
        ("not bearer", {"json_body": OK_BODY, "headers": {"Authorization": "Basic abc"}}, 401, "authentication_error",
         None, "bearer"),
        ("forged token", {"json_body": OK_BODY, "token": "abc.def.ghi"}, 401, "authentication_error", None, ""),
        ("malformed JSON", {"raw": b'{"model": "dmha", "messages": [', "token": token}, 400, "invalid_request_error",
         None, "not valid JSON"),
        ("empty body", {"raw": b"", "token": token}, 400, "invalid_request_error", None, "empty"),
        ("JSON array", {"json_body": [1, 2], "token": token}, 400, "invalid_request_error", None, "JSON object"),
        ("no messages", {"json_body": {"model": "dmha"}, "token": token}, 422, "invalid_request_error", "messages",
         "messages"),
        ("bad content type", {"json_body": {"model": "dmha", "messages": [{"role": "user", "content": 5}]},
                              "token": token}, 422, "invalid_request_error", "messages[0].content", ""),
        ("unknown role", {"json_body": {"model": "dmha", "messages": [{"role": "robot", "content": "x"}]},
                          "token": token}, 422, "invalid_request_error", "messages[0].role", ""),
        ("last is assistant", {"json_body": {"model": "dmha", "messages": [user_msg, {"role": "assistant",
                               "content": "x"}]}, "token": token}, 422, "invalid_request_error", "messages[1].role",
         "last message"),
        ("image part", {"json_body": {"model": "dmha", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "token": token}, 422,
         "invalid_request_error", "messages[0].content[0]", "only text"),
        ("unknown model", {"json_body": {**OK_BODY, "model": "gpt-4o"}, "token": token}, 404,
         "invalid_request_error", "model", "available: dmha, dmha:base"),
        ("stale pinned version", {"json_body": {**OK_BODY, "model": "dmha:v9"}, "token": token}, 404,
         "invalid_request_error", "model", "does not exist"),
        ("oversize message", {"json_body": {**OK_BODY, "messages": [{"role": "user", "content": "x" * 3000}]},
                              "token": token}, 422, "invalid_request_error", "messages", "limit 2000"),
        ("body over the gateway's limit", {"json_body": {**OK_BODY, "messages": [{"role": "user",
                                           "content": "x" * 70_000}]}, "token": token}, 413,
         "invalid_request_error", None, "limit is 65536"),
        ("temperature out of range", {"json_body": {**OK_BODY, "temperature": 5}, "token": token}, 422,
         "invalid_request_error", "temperature", "2"),
        ("tiny temperature", {"json_body": {**OK_BODY, "temperature": 0.001}, "token": token}, 422,
         "invalid_request_error", "temperature", "at least 0.01"),
        ("max_tokens over the server's limit", {"json_body": {**OK_BODY, "max_tokens": 100_000}, "token": token},
         422, "invalid_request_error", "max_tokens", "limit"),
        ("five stops", {"json_body": {**OK_BODY, "stop": list("abcde")}, "token": token}, 422,
         "invalid_request_error", "stop", "at most 4"),
        ("n = 2", {"json_body": {**OK_BODY, "n": 2}, "token": token}, 422, "invalid_request_error", "n", ""),
        ("tools", {"json_body": {**OK_BODY, "tools": [{"type": "function"}]}, "token": token}, 422,
         "invalid_request_error", "tools", "not supported"),
        ("bad session header", {"json_body": OK_BODY, "token": token, "headers": {"X-DMHA-Session": "a b"}}, 422,
         "invalid_request_error", "X-DMHA-Session", "session id"),
        ("bad user field", {"json_body": {**OK_BODY, "user": "x" * 200}, "token": token}, 422,
         "invalid_request_error", "user", "session id"),
        ("streaming with a forged token", {"json_body": {**OK_BODY, "stream": True}, "token": "abc.def.ghi"}, 401,
         "authentication_error", None, ""),
    ]  # fmt: skip
    for description, kwargs, status, kind, param, says in cases:
        reply = await http("POST", url, **kwargs)
        try:
            assert_openai_error(reply, status, kind, param=param, says=says)
        except AssertionError as exc:
            raise AssertionError(f"{description}: {exc}") from None

    assert_openai_error(await http("GET", f"{gateway.url}/v1/nowhere", token=token), 404, "invalid_request_error")
    assert_openai_error(await http("GET", url, token=token), 405, "invalid_request_error")
    assert_openai_error(await http("GET", f"{gateway.url}/v1/models"), 401, "authentication_error")
    events = await http("GET", f"{gateway.url}/dmha/v1/events?limit=x", token=token)
    assert_openai_error(events, 422, "invalid_request_error", param="limit")
    feedback = await http("POST", f"{gateway.url}/dmha/v1/feedback", token=token, json_body={"input_text": "q"})
    assert_openai_error(feedback, 422, "invalid_request_error", param="target_text")


async def test_the_openai_client_raises_its_own_error_classes(gateway):
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="forged", max_retries=0) as forged:
        with pytest.raises(openai.AuthenticationError):
            await forged.chat.completions.create(model="dmha", messages=OK_BODY["messages"])
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.token("alice"), max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="gpt-4o", messages=OK_BODY["messages"])
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        with pytest.raises(openai.UnprocessableEntityError) as big:
            await client.chat.completions.create(model="dmha", messages=[{"role": "user", "content": "é" * 1500}])
        assert "3000 bytes; limit 2000" in big.value.message
        with pytest.raises(openai.UnprocessableEntityError):
            await client.chat.completions.create(model="dmha", messages=OK_BODY["messages"], stream=True, temperature=9)


async def test_rate_limit_is_429(tmp_path, tiny_model_dir):
    cfg = integration_config(tmp_path, tiny_model_dir, limits={"rate_limit_per_minute": 2})
    async for gw in start_stack(cfg):
        token = gw.token("alice")
        statuses = [
            (await http("POST", f"{gw.url}/v1/chat/completions", token=token, json_body=OK_BODY)).status
            for _ in range(3)
        ]
        assert statuses[:2] == [200, 200]
        reply = await http("POST", f"{gw.url}/v1/chat/completions", token=token, json_body=OK_BODY)
        assert_openai_error(reply, 429, "rate_limit_error")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_server_down_is_503_and_the_gateway_recovers_without_a_restart(tmp_path, tiny_model_dir):
    port = free_port()
    from dmha_gateway import GatewaySettings

    async for url in start_gateway(GatewaySettings(address=f"127.0.0.1:{port}", timeout=30)):
        token = "x.y.z"  # never checked: nothing answers
        for reply in (
            await http("GET", f"{url}/v1/models", token=token),
            await http("POST", f"{url}/v1/chat/completions", token=token, json_body=OK_BODY),
            await http("POST", f"{url}/v1/chat/completions", token=token, json_body={**OK_BODY, "stream": True}),
        ):
            assert_openai_error(reply, 503, "server_error", says="unavailable")
        health = await http("GET", f"{url}/healthz")
        assert health.status == 503 and health.json()["server"].startswith("UNREACHABLE")

        cfg = integration_config(tmp_path, tiny_model_dir, server={"port": port})
        async for server in start_live_server(cfg):
            token = server.token("alice")
            for _ in range(100):  # the channel reconnects within its backoff (at most 5 s)
                reply = await http("POST", f"{url}/v1/chat/completions", token=token, json_body=OK_BODY)
                if reply.status != 503:
                    break
                await asyncio.sleep(0.1)
            assert reply.status == 200, reply.body[:300]
            assert (await http("GET", f"{url}/healthz")).status == 200
