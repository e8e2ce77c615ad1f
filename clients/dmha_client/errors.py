"""The SDK's errors: one class per gRPC status code the server uses.

The server maps the core's error tree (``dmha.errors``) onto status codes in one
interceptor; this module maps the codes back. The SDK has its own classes, with
the same names as the core's, because a client-only install has no core to import:

    DMHAError                       any failed call (``status``: the code's name)
    ├── InvalidArgument             INVALID_ARGUMENT (``field``, ``problem``)
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── NotFound                    NOT_FOUND
    ├── FailedPrecondition          FAILED_PRECONDITION
    ├── ResourceExhausted           RESOURCE_EXHAUSTED
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    ├── Cancelled                   CANCELLED
    └── Unavailable                 UNAVAILABLE (the only one worth retrying)

A code the server does not send by design (e.g. INTERNAL, a server bug) becomes a
plain :class:`DMHAError` carrying that code.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Cancelled",
    "DMHAError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "is_retryable",
]


class DMHAError(Exception):
    """A failed DMHA call. ``str(err)`` is the server's message.

    Args:
        message: what went wrong.
        status: the gRPC status code's name (default: the class's own code).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", status: str | None = None) -> None:
        super().__init__(message)
        self.status = status or self.code.name


class InvalidArgument(DMHAError):
    """A request field is invalid.

    Args:
        field: the request field, e.g. ``"message"``.
        problem: what is wrong, naming the limit.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class Unauthenticated(DMHAError):
    """The token is missing, expired or forged."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DMHAError):
    """The caller's role is too low for the call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(DMHAError):
    """No such thing for this caller (another user's ids included)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(DMHAError):
    """The server's state forbids the call (e.g. a learning update failed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DMHAError):
    """Rate limit hit or a queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(DMHAError):
    """The call (or a wait in the SDK) ran past its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(DMHAError):
    """The call was cancelled (by this client or the server going away)."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(DMHAError):
    """The server or one of its backends is down; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


_CLASS: dict[grpc.StatusCode, type[DMHAError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        PermissionDenied,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        DeadlineExceeded,
        Cancelled,
        Unavailable,
    )
}


def from_rpc_error(err: grpc.RpcError) -> DMHAError:
    """Translate a failed call into an SDK error.

    Args:
        err: the error raised by a stub (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    Returns:
        The class for its status code; unknown codes become a plain :class:`DMHAError`.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    details = details or code.name
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        # The server writes "<field>: <problem>" (see dmha.errors.InvalidArgument).
        field, sep, problem = details.partition(": ")
        return InvalidArgument(field, problem) if sep else InvalidArgument("request", details)
    cls = _CLASS.get(code)
    return cls(details) if cls is not None else DMHAError(details, code.name)


def is_retryable(err: grpc.RpcError) -> bool:
    """Only UNAVAILABLE is retried: every other failure would fail the same way again."""
    return hasattr(err, "code") and err.code() == grpc.StatusCode.UNAVAILABLE
