"""What every route needs: the caller's gRPC client, the JSON body, SSE framing.

The gateway keeps no state of its own: one gRPC channel to the server, shared by
every request, and per request a client view carrying the caller's bearer token
and request id (:meth:`dmha_client.AsyncDMHAClient.for_request`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from dmha_client import AsyncDMHAClient
from dmha_gateway.errors import APIError

__all__ = ["bearer_token", "caller", "read_json", "sse"]

_LOGIN_HINT = "send `Authorization: Bearer <DMHA token>` (mint one with `dmha token --user NAME`)"


def bearer_token(request: Request) -> str:
    """The bearer token of the request.

    Raises:
        APIError: 401 when the header is missing or not a bearer token (the server
            checks the token itself: a wrong one comes back as UNAUTHENTICATED).
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header:
        raise APIError(401, f"missing bearer token: {_LOGIN_HINT}", "authentication_error", "missing_token")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, f"the Authorization header is not a bearer token: {_LOGIN_HINT}", "authentication_error")
    return token


def caller(request: Request) -> AsyncDMHAClient:
    """The SDK client for this request's caller, over the gateway's shared channel.

    Raises:
        APIError: 401 without a bearer token.
    """
    shared: AsyncDMHAClient = request.app.state.client
    return shared.for_request(bearer_token(request), request.state.request_id)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, read up to ``limit`` bytes.

    Raises:
        APIError: 413 over the limit; 400 when the body is not a JSON object.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise _too_large(len(body), limit)
    if not body.strip():
        raise APIError.invalid(None, "the request body is empty; send a JSON object", 400, "invalid_json")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError.invalid(None, f"the request body is not valid JSON ({exc})", 400, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError.invalid(None, f"the request body must be a JSON object, not {type(data).__name__}", 400)
    return data


def _too_large(size: int, limit: int) -> APIError:
    return APIError.invalid(
        None, f"the request body is {size} bytes or more; the gateway's limit is {limit}", 413, "request_too_large"
    )


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON, or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
