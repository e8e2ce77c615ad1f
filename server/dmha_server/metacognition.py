"""MetacognitionService: the caller's monitor events."""

from __future__ import annotations

import grpc

from dmha.runtime import EventStore, run_blocking
from dmha_proto.v1 import metacognition_pb2, metacognition_pb2_grpc
from dmha_server.convert import recorded_event_proto
from dmha_server.interceptors import current_principal

__all__ = ["MetacognitionServicer"]


class MetacognitionServicer(metacognition_pb2_grpc.MetacognitionServiceServicer):
    """Args: events: the event store."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    async def ListEvents(self, request: metacognition_pb2.ListEventsRequest, context: grpc.aio.ServicerContext):
        # 0 (unset) means the store's default; the store checks the limit.
        recs = await run_blocking(
            self._events.history,
            current_principal().user_id,
            request.limit or None,
            request.session_id,
            request.include_passing,
        )
        return metacognition_pb2.ListEventsResponse(events=[recorded_event_proto(r) for r in recs])
