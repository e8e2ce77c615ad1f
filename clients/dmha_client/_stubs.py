"""One place that knows which stub serves which service."""

from __future__ import annotations

from typing import Any

from dmha_proto.v1 import auth_pb2_grpc, chat_pb2_grpc, session_pb2_grpc

__all__ = ["Stubs"]


class Stubs:
    """Every service stub over one channel (sync or aio: the stubs are the same classes)."""

    def __init__(self, channel: Any) -> None:
        self.chat = chat_pb2_grpc.ChatServiceStub(channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
