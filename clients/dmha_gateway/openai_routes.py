"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models[/{id}]``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dmha_client import AsyncChatStream, AsyncDMHAClient, DMHAError
from dmha_gateway import metrics
from dmha_gateway.edge import caller, read_json, sse
from dmha_gateway.errors import APIError, from_dmha_error
from dmha_gateway.schema import (
    MODEL_ALIAS,
    ChatPlan,
    chunk,
    completion,
    extension,
    finish_reason,
    model_card,
    parse_request,
    plan_chat,
    usage,
)
from dmha_proto.v1 import learning_pb2

__all__ = ["chat_completions", "list_models", "live_version", "retrieve_model"]

SESSION_HEADER = "X-DMHA-Session"


async def live_version(client: AsyncDMHAClient) -> learning_pb2.ModelVersion:
    """The model version the server is serving.

    Raises:
        APIError: the server's error, or 503 when it reports no live version.
    """
    try:
        versions = await client.list_versions()
    except DMHAError as err:
        raise from_dmha_error(err) from None
    for version in versions:
        if version.live:
            return version
    raise APIError(503, "the DMHA server reports no live model version; retry later", "server_error", "unavailable")


def _model_ids(live: learning_pb2.ModelVersion) -> list[str]:
    return [MODEL_ALIAS, f"{MODEL_ALIAS}:{live.id}"]


def _unknown_model(name: str, live: learning_pb2.ModelVersion) -> APIError:
    known = ", ".join(_model_ids(live))
    return APIError(
        404,
        f"the model {name!r} does not exist; available: {known}",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


async def _check_model(client: AsyncDMHAClient, name: str) -> None:
    # The alias needs no round trip: it is whatever version answers.
    if name == MODEL_ALIAS:
        return
    live = await live_version(client)
    if name not in _model_ids(live):
        raise _unknown_model(name, live)


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the alias ``dmha`` and the live version ``dmha:<id>``."""
    live = await live_version(caller(request))
    return JSONResponse({"object": "list", "data": [model_card(m, live) for m in _model_ids(live)]})


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{model}``."""
    live = await live_version(caller(request))
    name = request.path_params["model"]
    if name not in _model_ids(live):
        raise _unknown_model(name, live)
    return JSONResponse(model_card(name, live))


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``, streaming (SSE) or not.

    Errors before the first token come back as an HTTP error status; an error after
    it (the stream has begun) as a last ``{"error": ...}`` event, as OpenAI does.
    """
    client = caller(request)
    req = parse_request(await read_json(request, request.app.state.settings.max_body_bytes))
    await _check_model(client, req.model)
    plan = plan_chat(req, request.headers.get(SESSION_HEADER) or None)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    headers = {SESSION_HEADER: plan.session_id}
    if not req.stream:
        try:
            result = await client.chat(plan.message, plan.session_id, **plan.options)
        except DMHAError as err:
            raise from_dmha_error(err) from None
        return JSONResponse(completion(completion_id, created, req.model, plan, result.reply), headers=headers)

    start = time.perf_counter()
    stream = client.chat_stream(plan.message, plan.session_id, **plan.options)
    deltas = aiter(stream)
    try:
        # Wait for the first token before answering, so that a refused request
        # (bad token, bad field, server down) gets its own HTTP status.
        first = await anext(deltas, None)
    except DMHAError as err:
        raise from_dmha_error(err) from None
    metrics.observe_first_token(time.perf_counter() - start)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    events = _events(stream, deltas, first, plan, _Ids(completion_id, created, req.model), include_usage)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@dataclass(frozen=True, slots=True)
class _Ids:
    """What every chunk of one completion repeats."""

    completion_id: str
    created: int
    model: str


async def _events(
    stream: AsyncChatStream,
    deltas: AsyncIterator[str],
    first: str | None,
    plan: ChatPlan,
    ids: _Ids,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    finished = False
    shown: list[str] = [first or ""]
    try:
        yield sse(chunk(ids.completion_id, ids.created, ids.model, {"role": "assistant", "content": first or ""}))
        async for text in deltas:
            shown.append(text)
            yield sse(chunk(ids.completion_id, ids.created, ids.model, {"content": text}))
        assert stream.result is not None  # the SDK sets it before the iteration ends
        reply = stream.result.reply
        dmha = extension(reply, plan.warnings)
        # The monitor may have replaced the streamed draft: the final text rides along.
        dmha["text"] = reply.text
        dmha["corrected"] = reply.text != "".join(shown)
        yield sse(
            chunk(
                ids.completion_id,
                ids.created,
                ids.model,
                {},
                finish_reason(reply.finish_reason),
                system_fingerprint=f"{MODEL_ALIAS}:{reply.model_version}",
                dmha=dmha,
            )
        )
        if include_usage:
            yield sse(
                {
                    "id": ids.completion_id,
                    "object": "chat.completion.chunk",
                    "created": ids.created,
                    "model": ids.model,
                    "choices": [],
                    "usage": usage(reply),
                }
            )
        yield sse("[DONE]")
        finished = True
    except DMHAError as err:
        finished = True
        yield sse(from_dmha_error(err).body())
    finally:
        if not finished:
            # The HTTP client went away: stop generating for nobody.
            stream.cancel()
