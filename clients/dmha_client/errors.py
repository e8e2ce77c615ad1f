"""gRPC status codes -> the DMHA error tree (the inverse of the server's mapping).

SDK users catch the same classes the core raises (``dmha.errors``); each raised
error also carries ``status`` (the status code name, e.g. ``"UNAUTHENTICATED"``).
"""

from __future__ import annotations

import grpc

from dmha import errors

__all__ = ["from_rpc_error", "is_retryable"]

_CLASS: dict[grpc.StatusCode, type[errors.DMHAError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}


def from_rpc_error(err: grpc.RpcError) -> errors.DMHAError:
    """Translate a failed call into a DMHA error.

    Args:
        err: the error raised by a stub (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    Returns:
        The matching :mod:`dmha.errors` instance; unknown codes become a plain DMHAError.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    details = details or code.name
    cls = _CLASS.get(code, errors.DMHAError)
    if cls is errors.InvalidArgument:
        field, sep, problem = details.partition(": ")
        exc: errors.DMHAError = errors.InvalidArgument(field, problem) if sep else errors.InvalidArgument("request", details)
    else:
        exc = cls(details)
    exc.status = code.name  # type: ignore[attr-defined]
    return exc


def is_retryable(err: grpc.RpcError) -> bool:
    """Only UNAVAILABLE is retried: every other failure would fail the same way again."""
    return hasattr(err, "code") and err.code() == grpc.StatusCode.UNAVAILABLE
