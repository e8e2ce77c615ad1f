"""One place that knows which stub serves which service."""

from __future__ import annotations

from typing import Any

from dmha_proto.v1 import (
    auth_pb2_grpc,
    chat_pb2_grpc,
    knowledge_pb2_grpc,
    learning_pb2_grpc,
    memory_pb2_grpc,
    metacognition_pb2_grpc,
    session_pb2_grpc,
)

__all__ = ["Stubs"]


class Stubs:
    """Every service stub over one channel (sync or aio: the stubs are the same classes)."""

    def __init__(self, channel: Any) -> None:
        self.chat = chat_pb2_grpc.ChatServiceStub(channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.feedback = learning_pb2_grpc.FeedbackServiceStub(channel)
        self.models = learning_pb2_grpc.ModelServiceStub(channel)
        self.metacognition = metacognition_pb2_grpc.MetacognitionServiceStub(channel)
