"""What the sync and asyncio clients share: settings, metadata, requests, retries."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from dmha_client.errors import InvalidArgument
from dmha_proto.v1 import chat_pb2, common_pb2, memory_pb2

__all__ = ["FINAL_STATES", "BaseClient", "ChatResult", "DEFAULT_ADDRESS", "RetryPolicy", "memory_request"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
FINAL_STATES = frozenset({"deployed", "rejected", "failed", "candidate"})
"""Job states that will not change by themselves (a candidate waits for a trainer)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for UNAVAILABLE only."""

    attempts: int = 4
    initial: float = 0.2
    maximum: float = 3.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class ChatResult:
    """A finished chat turn as the SDK returns it (the wire ChatReply is in ``reply``)."""

    text: str
    session_id: str
    reply: chat_pb2.ChatReply


class BaseClient:
    """Settings and request building shared by :class:`DMHAClient` and :class:`AsyncDMHAClient`.

    Args:
        address: ``host:port``; default ``$DMHA_ADDRESS`` or 127.0.0.1:50051.
        token: bearer JWT; default ``$DMHA_TOKEN``.
        timeout: default per-call deadline in seconds (None = no deadline).
        retry: backoff policy for UNAVAILABLE.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.address = address or os.environ.get("DMHA_ADDRESS") or DEFAULT_ADDRESS
        self.token = token if token is not None else os.environ.get("DMHA_TOKEN", "")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @staticmethod
    def _chat_request(
        message: str,
        session_id: str = "",
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> chat_pb2.ChatRequest:
        options = common_pb2.GenerationOptions()
        if temperature is not None:
            options.temperature = temperature
        if top_p is not None:
            options.top_p = top_p
        if max_new_tokens is not None:
            options.max_new_tokens = max_new_tokens
        if seed is not None:
            options.seed = seed
        return chat_pb2.ChatRequest(session_id=session_id, message=message, options=options)


def memory_request(memory_id: str, session_id: str, everything: bool) -> memory_pb2.DeleteMemoryRequest:
    """A Delete request with exactly one selector.

    Raises:
        InvalidArgument: none or several selectors given (checked before any call).
    """
    chosen = [bool(memory_id), bool(session_id), everything]
    if sum(chosen) != 1:
        raise InvalidArgument("selector", "give exactly one of memory_id, session_id or everything=True")
    if memory_id:
        return memory_pb2.DeleteMemoryRequest(id=memory_id)
    if session_id:
        return memory_pb2.DeleteMemoryRequest(session_id=session_id)
    return memory_pb2.DeleteMemoryRequest(all=True)
