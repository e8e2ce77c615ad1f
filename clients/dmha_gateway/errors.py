"""Errors in the OpenAI API's shape, and the one table that maps the SDK's errors onto HTTP.

Every failure the gateway answers is an :class:`APIError` with a body that OpenAI
clients parse::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages", "code": "invalid_argument"}}

gRPC status (SDK class)          HTTP  type
INVALID_ARGUMENT                 422   invalid_request_error
UNAUTHENTICATED                  401   authentication_error
PERMISSION_DENIED                403   permission_error
NOT_FOUND                        404   invalid_request_error
FAILED_PRECONDITION              409   invalid_request_error
RESOURCE_EXHAUSTED               429   rate_limit_error
DEADLINE_EXCEEDED                504   timeout_error
UNAVAILABLE, CANCELLED           503   server_error   (retry later)
UNIMPLEMENTED                    501   server_error   (a service the server runs without)
anything else (a server bug)     500   server_error   (the server's message, no internals)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from dmha_client.errors import DMHAError, InvalidArgument

__all__ = ["HTTP_FOR_STATUS", "APIError", "from_dmha_error"]

HTTP_FOR_STATUS: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (422, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "FAILED_PRECONDITION": (409, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
    # CANCELLED reaches a client only when the server shuts down under a call.
    "CANCELLED": (503, "server_error"),
    "UNAVAILABLE": (503, "server_error"),
    # A service the server was started without (e.g. long-term memory disabled).
    "UNIMPLEMENTED": (501, "server_error"),
}
"""gRPC status name -> (HTTP status, OpenAI error type)."""

# The server names request fields of the gRPC API; an OpenAI caller knows the JSON ones.
_PARAM = {
    "message": "messages",
    "options.temperature": "temperature",
    "options.top_p": "top_p",
    "options.max_new_tokens": "max_tokens",
    "options.seed": "seed",
    "options.stop": "stop",
    "session_id": "X-DMHA-Session",
}


class APIError(Exception):
    """An error answer: HTTP status plus the OpenAI error object.

    Args:
        status: HTTP status code.
        message: what went wrong and what to do, for a person.
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``...).
        code: a stable machine-readable code (e.g. ``model_not_found``), or None.
        param: the request field at fault, or None.
    """

    def __init__(self, status: int, message: str, type: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}`` (also sent as an SSE event mid-stream)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    @classmethod
    def invalid(cls, param: str | None, message: str, status: int = 422, code: str = "invalid_value") -> APIError:
        """A bad request field (422 unless told otherwise)."""
        return cls(status, message, "invalid_request_error", code, param)


def from_dmha_error(err: DMHAError) -> APIError:
    """Translate an SDK error (a gRPC status) into the HTTP answer.

    Args:
        err: raised by a :class:`~dmha_client.AsyncDMHAClient` call.

    Returns:
        The error, with the server's message and, for INVALID_ARGUMENT, the field
        renamed to the OpenAI request's name where the two differ.
    """
    status, kind = HTTP_FOR_STATUS.get(err.status, (500, "server_error"))
    message = str(err) or err.status
    param = None
    if isinstance(err, InvalidArgument):
        param = _PARAM.get(err.field, err.field)
        message = f"{param}: {err.problem}"
    if status == 503:
        message = f"the DMHA server is unavailable ({message}); retry later"
    return APIError(status, message, kind, err.status.lower(), param)
