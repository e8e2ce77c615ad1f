"""MetacognitionService: the caller's monitor events."""

from __future__ import annotations

import grpc
from dmha_proto.v1 import chat_pb2, metacognition_pb2, metacognition_pb2_grpc
from dmha_server.interceptors import current_principal

from dmha.errors import InvalidArgument
from dmha.executor import run_blocking
from dmha.metacognition.monitor import EventStore

__all__ = ["MetacognitionServicer"]

_MAX_LIMIT = 500


class MetacognitionServicer(metacognition_pb2_grpc.MetacognitionServiceServicer):
    """Args: events: the event store."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    async def ListEvents(self, request: metacognition_pb2.ListEventsRequest, context: grpc.aio.ServicerContext):
        limit = request.limit or 50
        if limit > _MAX_LIMIT:
            raise InvalidArgument("limit", f"is {limit}; limit {_MAX_LIMIT}")
        recs = await run_blocking(self._events.list, current_principal().user_id, limit, request.session_id)
        return metacognition_pb2.ListEventsResponse(
            events=[
                metacognition_pb2.RecordedEvent(
                    event=chat_pb2.MetacognitionEvent(
                        id=r.event.id, score=r.event.score, signals=r.event.signals,
                        actions=list(r.event.actions), outcome=r.event.outcome,
                    ),
                    session_id=r.session_id,
                    turn_id=r.turn_id,
                    created_at=r.created_at,
                    original_text=r.original_text,
                    final_text=r.final_text,
                )
                for r in recs
            ]
        )
