"""The OpenAI chat-completions wire format: the request as DMHA reads it, the replies it sends.

DMHA keeps each conversation server-side, in a session. A request therefore sends
only its last message (which must be the user's) to the session chosen by the
``X-DMHA-Session`` header, else the ``user`` field, else a new one; earlier
messages of ``messages`` are the client's copy of that session's history. What
DMHA adds to a reply (memories used, statements told, claims checked, monitor
events) travels in a ``dmha`` field that plain OpenAI clients ignore; the README
documents it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmha_gateway.errors import APIError
from dmha_proto.v1 import chat_pb2, learning_pb2

__all__ = [
    "MODEL_ALIAS",
    "ChatCompletionRequest",
    "ChatPlan",
    "chunk",
    "completion",
    "extension",
    "finish_reason",
    "model_card",
    "parse_request",
    "plan_chat",
    "usage",
]

MODEL_ALIAS = "dmha"
"""The model name that always means the live version (``dmha:<version>`` pins one)."""

_STOP_LIMIT = 4
# The server's id rule (dmha/ids.py), checked here too so the error names the field
# the caller sent (header or ``user``) rather than the gRPC request's session_id.
_SESSION_ID = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. Fields DMHA cannot honour are refused, not ignored,
    when ignoring them would change the answer (``n`` > 1, tools, logprobs, JSON mode);
    sampling knobs it has no equivalent for (penalties, ``logit_bias``) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)
    user: str | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None


def _is_branch(name: str) -> bool:
    return name in ("str", "int", "float", "bool") or name.startswith(("list[", "dict["))


def parse_request(data: dict[str, Any]) -> ChatCompletionRequest:
    """Validate a request body.

    Raises:
        APIError: 422 naming the first bad field (``messages[0].content``) and why.
    """
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A union (str | list) reports each branch as a path element: drop those.
        path = [p for p in first["loc"] if not (isinstance(p, str) and _is_branch(p))]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        raise APIError.invalid(param or None, f"{param or 'body'}: {first['msg']}") from None
    if req.tools or req.functions:
        raise APIError.invalid(
            "tools", "tools: tool and function calling are not supported by DMHA", code="unsupported"
        )
    if req.logprobs:
        raise APIError.invalid("logprobs", "logprobs: not supported by DMHA", code="unsupported")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError.invalid("response_format", "response_format: only {'type': 'text'} is supported")
    return req


@dataclass(frozen=True)
class ChatPlan:
    """One DMHA turn, derived from a request."""

    message: str
    session_id: str
    options: dict[str, Any]
    """Keyword arguments of the SDK's ``chat`` / ``chat_stream``."""
    warnings: tuple[str, ...] = field(default=())
    """What the gateway did not pass on, for the ``dmha`` extension."""


def _text(message: _Message, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError.invalid(
                f"messages[{index}].content[{j}]",
                f"messages[{index}].content[{j}]: only text parts are supported (got type {part.get('type')!r})",
            )
        parts.append(part["text"])
    return "\n".join(parts)


def plan_chat(req: ChatCompletionRequest, header_session: str | None) -> ChatPlan:
    """The DMHA turn for a request.

    Args:
        req: the validated request.
        header_session: the ``X-DMHA-Session`` header, if any (it wins over ``user``).

    Returns:
        The plan. A request naming no session gets a fresh id, so every response
        can name its session from the first byte.

    Raises:
        APIError: 422 when the last message is not a non-empty user message, the
            session id breaks the id rule, or ``stop`` has too many sequences.
    """
    last = len(req.messages) - 1
    if req.messages[last].role != "user":
        raise APIError.invalid(
            f"messages[{last}].role",
            f"messages[{last}].role: the last message must be the user's (is {req.messages[last].role!r})",
        )
    text = _text(req.messages[last], last)
    if not text.strip():
        raise APIError.invalid(f"messages[{last}].content", f"messages[{last}].content: is empty")
    for param, value in (("X-DMHA-Session", header_session), ("user", req.user)):
        if value is not None and not _SESSION_ID.fullmatch(value):
            raise APIError.invalid(
                param, f"{param}: a session id must be 1-128 characters of A-Z a-z 0-9 _ . @ - (got {value[:40]!r})"
            )
    session = header_session or req.user or uuid.uuid4().hex
    warnings: list[str] = []
    if any(m.role in ("system", "developer") for m in req.messages):
        warnings.append("system messages were not applied: the server's system prompt is used")
    if any(m.role in ("user", "assistant") for m in req.messages[:last]) and not (header_session or req.user):
        warnings.append(
            "earlier messages were not sent: DMHA keeps each conversation server-side; "
            "name it with the X-DMHA-Session header or the `user` field"
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > _STOP_LIMIT:
        raise APIError.invalid("stop", f"stop: {len(stop)} sequences; at most {_STOP_LIMIT}")
    options: dict[str, Any] = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_new_tokens": req.max_completion_tokens or req.max_tokens,
        "seed": req.seed,
        "stop": stop,
    }
    return ChatPlan(text, session, options, tuple(warnings))


def finish_reason(dmha_reason: str) -> str:
    """OpenAI's finish reason: a reply cut short by a deadline or cancellation is ``length``."""
    return "stop" if dmha_reason == "stop" else "length"


def usage(reply: chat_pb2.ChatReply) -> dict[str, int]:
    """The ``usage`` object."""
    prompt, completion_tokens = reply.usage.prompt_tokens, reply.usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def extension(reply: chat_pb2.ChatReply, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The ``dmha`` field: what DMHA did for this reply (see the README's gateway section)."""
    return {
        "session_id": reply.session_id,
        "user_turn_id": reply.user_turn_id,
        "assistant_turn_id": reply.assistant_turn_id,
        "request_id": reply.request_id,
        "model_version": reply.model_version,
        "finish_reason": reply.finish_reason,
        "memories": [
            {"id": m.id, "kind": m.kind, "text": m.text, "score": round(m.score, 4), "why": m.why}
            for m in reply.memories
        ],
        "statements": [
            {
                "statement": s.statement,
                "status": s.status,
                "id": s.id,
                "reason": s.reason,
                "conflicts_with": list(s.conflicts_with),
            }
            for s in reply.statements
        ],
        "claims": [{"claim": c.claim, "verdict": c.verdict, "support": list(c.support)} for c in reply.claims],
        "monitor_events": [
            {
                "id": e.id,
                "score": round(e.score, 4),
                "signals": {k: round(v, 4) for k, v in sorted(e.signals.items())},
                "actions": list(e.actions),
                "outcome": e.outcome,
            }
            for e in reply.metacognition
        ],
        "warnings": [*reply.warnings, *warnings],
        "notice": reply.notice,
    }


def completion(completion_id: str, created: int, model: str, plan: ChatPlan, reply: chat_pb2.ChatReply) -> dict:
    """A whole ``chat.completion`` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": f"{MODEL_ALIAS}:{reply.model_version}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": finish_reason(reply.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": usage(reply),
        "dmha": extension(reply, plan.warnings),
    }


def chunk(
    completion_id: str, created: int, model: str, delta: dict[str, str], reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice (``extra``: top-level fields)."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
        **extra,
    }


def model_card(model_id: str, version: learning_pb2.ModelVersion) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(version.created_at),
        "owned_by": "dmha",
        "dmha": {"version": version.id, "parent": version.parent, "status": version.status, "live": version.live},
    }
