"""Telling Milvus failures apart, and explaining them.

Which exceptions come from the backend (and which of those mean it did not answer at
all), why an embedded Milvus Lite database did not open, and the one log record of
Milvus Lite's that is noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pymilvus.exceptions import MilvusException

__all__ = [
    "CONNECT_FAILED",
    "NOT_LOADED",
    "is_backend_error",
    "is_outage",
    "lite_failure",
    "quiet_lite_unimplemented",
]

CONNECT_FAILED = 2  # pymilvus Status.CONNECT_FAILED
NOT_LOADED = 101  # Milvus merr ErrCollectionNotLoaded (also Milvus Lite's)


def is_backend_error(exc: BaseException) -> bool:
    """True when ``exc`` came from Milvus or the transport to it (not from DMHA's code)."""
    # pymilvus mostly wraps transport errors in MilvusException, but lets a few raw
    # grpc.RpcError through; recognise those by module so dmha never imports grpc.
    return isinstance(exc, MilvusException) or type(exc).__module__.split(".")[0] == "grpc"


class _LiteUnimplementedFilter(logging.Filter):
    """Drops the traceback Milvus Lite logs for each method it does not implement.

    Milvus Lite serves pymilvus from a gRPC server in this process; pymilvus calls
    ``AllocTimestamp`` while creating an index, Milvus Lite lacks it, grpc logs the
    NotImplementedError with a traceback (three per start), and pymilvus ignores the
    answer. Only that record is dropped: the exception must be NotImplementedError
    raised in pymilvus's generated servicer base.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NotImplementedError) or exc.__traceback__ is None:
            return True
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        return "pymilvus" not in tb.tb_frame.f_code.co_filename


def quiet_lite_unimplemented() -> None:
    """Install the filter of Milvus Lite's "Method not implemented" tracebacks (once)."""
    # grpc's synchronous server logs under "grpc._server"; DMHA's own server is
    # grpc.aio (another logger), so its errors are never touched.
    logger = logging.getLogger("grpc._server")
    if not any(isinstance(f, _LiteUnimplementedFilter) for f in logger.filters):
        logger.addFilter(_LiteUnimplementedFilter())


def is_outage(exc: BaseException) -> bool:
    """For a backend error: Milvus did not answer at all (unreachable, or no reply in time).

    Args:
        exc: an exception for which :func:`is_backend_error` holds.

    Returns:
        False when Milvus answered with an error of its own.
    """
    if isinstance(exc, MilvusException):
        return exc.code == CONNECT_FAILED
    return True  # a raw grpc error: the transport failed


def lite_failure(path: Path) -> str:
    """Explain why a Milvus Lite database did not open (the cause is only logged upstream).

    Args:
        path: the database directory.

    Returns:
        A message naming the path and what to do.
    """
    if path.exists() and not path.is_dir():
        return (
            f"Milvus Lite database {path} is a file, not a database directory "
            "(corrupt, or written by an older milvus-lite); move it away or point "
            "memory.longterm.uri elsewhere"
        )
    lock = path / "LOCK"
    if lock.exists():
        try:
            import fcntl

            with open(lock, "a+b") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return f"Milvus Lite database {path} is locked by another process (only one process may open it)"
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
    return f"Milvus Lite database {path} cannot be opened (corrupt or unreadable)"
