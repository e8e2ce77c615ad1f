"""AuthService: token issuance for holders of the admin API key."""

from __future__ import annotations

import grpc

from dmha.runtime import Authenticator
from dmha_proto.v1 import auth_pb2, auth_pb2_grpc

__all__ = ["AuthServicer"]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Args: auth: mints tokens."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def IssueToken(self, request: auth_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext):
        token, expires_at = self._auth.issue_with_key(
            request.api_key, request.user_id, tuple(request.roles), request.ttl_seconds
        )
        return auth_pb2.IssueTokenResponse(token=token, expires_at=expires_at)
