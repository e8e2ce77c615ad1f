"""SessionService: the caller's own sessions."""

from __future__ import annotations

import grpc

from dmha.runtime import Sessions
from dmha_proto.v1 import session_pb2, session_pb2_grpc
from dmha_server.convert import session_proto, session_summary
from dmha_server.interceptors import current_principal

__all__ = ["SessionServicer"]


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    """Args: sessions: the core session operations."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    async def ListSessions(self, request: session_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext):
        infos = await self._sessions.list(current_principal())
        return session_pb2.ListSessionsResponse(sessions=[session_summary(i) for i in infos])

    async def GetSession(self, request: session_pb2.GetSessionRequest, context: grpc.aio.ServicerContext):
        turns = await self._sessions.get(current_principal(), request.session_id)
        return session_proto(request.session_id, turns)

    async def DeleteSession(self, request: session_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext):
        await self._sessions.delete(current_principal(), request.session_id)
        return session_pb2.DeleteSessionResponse()
