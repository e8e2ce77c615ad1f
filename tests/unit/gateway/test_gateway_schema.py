"""The gateway's pure parts: request validation, turn planning, reply shapes, the error table."""

from __future__ import annotations

import pytest

from dmha_client import errors
from dmha_gateway.errors import APIError, from_dmha_error
from dmha_gateway.schema import chunk, completion, extension, parse_request, plan_chat
from dmha_proto.v1 import chat_pb2, common_pb2

USER = {"role": "user", "content": "Hi"}


def request(**fields):
    return parse_request({"model": "dmha", "messages": [USER], **fields})


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": ""}, "model"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": -5}, "seed"),
        ({"stop": [1]}, "stop"),
        ({"n": 3}, "n"),
        ({"stream": "often"}, "stream"),
        ({"tools": [{}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_fields_are_422_naming_the_field(fields, param):
    with pytest.raises(APIError) as err:
        parse_request({"model": "dmha", "messages": [USER], **fields})
    assert err.value.status == 422 and err.value.param == param
    assert err.value.message.startswith(param)


def test_fields_dmha_cannot_use_are_ignored_and_options_map_over():
    req = request(frequency_penalty=1.0, logit_bias={"1": 2}, temperature=0.5, top_p=0.9, seed=4, stop="END")
    plan = plan_chat(req, None)
    assert plan.options == {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": None, "seed": 4, "stop": ["END"]}
    assert plan_chat(request(max_tokens=5, max_completion_tokens=7), None).options["max_new_tokens"] == 7


def test_session_comes_from_the_header_then_user_then_a_fresh_id():
    assert plan_chat(request(user="u1"), "h1").session_id == "h1"
    assert plan_chat(request(user="u1"), None).session_id == "u1"
    a, b = plan_chat(request(), None).session_id, plan_chat(request(), None).session_id
    assert a != b and len(a) == 32
    with pytest.raises(APIError) as err:
        plan_chat(request(user="has space"), None)
    assert err.value.param == "user"


def test_only_the_last_user_message_is_sent_and_what_is_dropped_is_said():
    history = [{"role": "system", "content": "Be nice"}, USER, {"role": "assistant", "content": "Hello"}]
    req = parse_request({"model": "dmha", "messages": [*history, {"role": "user", "content": [
        {"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}]})  # fmt: skip
    plan = plan_chat(req, None)
    assert plan.message == "part one\npart two"
    assert any("system" in w for w in plan.warnings) and any("earlier messages" in w for w in plan.warnings)
    assert not any("earlier" in w for w in plan_chat(req, "s1").warnings)  # a named session holds them
    for bad in ([USER, {"role": "assistant", "content": "x"}], [{"role": "user", "content": "  "}]):
        with pytest.raises(APIError):
            plan_chat(parse_request({"model": "dmha", "messages": bad}), None)


def reply() -> chat_pb2.ChatReply:
    return chat_pb2.ChatReply(
        session_id="s",
        assistant_turn_id="t",
        text="Lisbon.",
        usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=3),
        finish_reason="deadline",
        model_version="v2",
        memories=[chat_pb2.RetrievedMemory(id="m", kind="turn", text="Sister in Lisbon", score=0.812345, why="dense")],
        claims=[chat_pb2.ClaimCheck(claim="x.a = 1", verdict="UNKNOWN")],
        metacognition=[chat_pb2.MetacognitionEvent(id="e", score=0.5, signals={"kb": 1.0}, outcome="kept")],
        warnings=["long-term memory unavailable"],
    )


def test_completion_and_chunks_have_the_openai_shape_and_the_dmha_extension():
    plan = plan_chat(request(), "s")
    body = completion("chatcmpl-1", 100, "dmha", plan, reply())
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Lisbon."},
        "finish_reason": "length",  # a deadline cut the reply short
        "logprobs": None,
    }
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert body["system_fingerprint"] == "dmha:v2"
    ext = body["dmha"]
    assert ext["finish_reason"] == "deadline" and ext["memories"][0]["score"] == 0.8123
    assert ext["monitor_events"][0]["signals"] == {"kb": 1.0} and ext["claims"][0]["verdict"] == "UNKNOWN"
    assert ext == extension(reply())
    c = chunk("chatcmpl-1", 100, "dmha", {"content": "Lis"})
    assert c["object"] == "chat.completion.chunk" and c["choices"][0]["delta"] == {"content": "Lis"}


@pytest.mark.parametrize(
    "error, status, kind",
    [
        (errors.InvalidArgument("options.max_new_tokens", "is 9; limit 8"), 422, "invalid_request_error"),
        (errors.Unauthenticated("expired"), 401, "authentication_error"),
        (errors.PermissionDenied("needs trainer"), 403, "permission_error"),
        (errors.NotFound("no such session"), 404, "invalid_request_error"),
        (errors.FailedPrecondition("nothing to roll back"), 409, "invalid_request_error"),
        (errors.ResourceExhausted("rate limit"), 429, "rate_limit_error"),
        (errors.DeadlineExceeded("too slow"), 504, "timeout_error"),
        (errors.Cancelled("shutting down"), 503, "server_error"),
        (errors.Unavailable("connection refused"), 503, "server_error"),
        (errors.DMHAError("internal error (request id 7)", "INTERNAL"), 500, "server_error"),
    ],
)
def test_error_table(error, status, kind):
    api = from_dmha_error(error)
    assert (api.status, api.type, api.code) == (status, kind, error.status.lower())
    assert set(api.body()["error"]) == {"message", "type", "param", "code"}
    if isinstance(error, errors.InvalidArgument):
        assert api.param == "max_tokens" and api.message == "max_tokens: is 9; limit 8"
