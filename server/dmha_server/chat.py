"""ChatService: translate requests to :class:`~dmha.context.ChatPipeline` turns."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from dmha.runtime import ChatPipeline, LimitsConfig, TurnResult, drain, request_id, resolve_options
from dmha_proto.v1 import chat_pb2, chat_pb2_grpc
from dmha_server import metrics
from dmha_server.convert import chat_reply, option_fields
from dmha_server.interceptors import current_principal

__all__ = ["ChatServicer"]


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Args: pipeline: runs turns; limits: for option defaults and bounds."""

    def __init__(self, pipeline: ChatPipeline, limits: LimitsConfig) -> None:
        self._pipeline = pipeline
        self._limits = limits

    def _run(self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext):
        options = resolve_options(self._limits, timeout=context.time_remaining(), **option_fields(request.options))
        return self._pipeline.run(current_principal(), request.session_id, request.message, options, request_id.get())

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.ChatResponse]:
        start, first = time.perf_counter(), None
        async for item in self._run(request, context):
            if isinstance(item, TurnResult):
                metrics.observe_generation(first, item.completion_tokens)
                yield chat_pb2.ChatResponse(final=chat_reply(item))
            else:
                first = first if first is not None else time.perf_counter() - start
                yield chat_pb2.ChatResponse(delta=item)

    async def Contextualize(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ChatReply:
        result = await drain(self._run(request, context))
        metrics.observe_generation(None, result.completion_tokens)
        return chat_reply(result)
