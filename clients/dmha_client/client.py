"""The blocking SDK client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dmha_client._base import BaseClient, ChatResult
from dmha_client._stubs import Stubs
from dmha_client.errors import from_rpc_error, is_retryable
from dmha_proto.v1 import auth_pb2, chat_pb2, session_pb2

__all__ = ["ChatStream", "DMHAClient"]

T = TypeVar("T")


class ChatStream:
    """Iterate for text deltas; ``result`` holds the final :class:`ChatResult` afterwards."""

    def __init__(self, responses: Iterator[chat_pb2.ChatResponse], call: Any) -> None:
        self._responses = responses
        self._call = call
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for response in self._responses:
                if response.HasField("final"):
                    final = response.final
                    self.result = ChatResult(final.text, final.session_id, final)
                else:
                    yield response.delta
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def cancel(self) -> None:
        """Stop generation on the server."""
        self._call.cancel()


class DMHAClient(BaseClient):
    """Synchronous DMHA client; see :class:`~dmha_client._base.BaseClient` for arguments.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = grpc.insecure_channel(self.address)
        self._stubs = Stubs(self._channel)

    def __enter__(self) -> DMHAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, metadata=self._metadata(), timeout=timeout or self.timeout)
            except grpc.RpcError as err:
                if is_retryable(err) and attempt < self.retry.attempts:
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise from_rpc_error(err) from None

    # -- chat ---------------------------------------------------------------------

    def chat(self, message: str, session_id: str = "", **options: Any) -> ChatResult:
        """Send a message and wait for the whole reply.

        Args:
            message: the user's message.
            session_id: continue this session ("" starts one).
            **options: temperature, top_p, max_new_tokens, seed.

        Returns:
            The reply text, session id and full ChatReply.

        Raises:
            DMHAError: a subclass per status code (see :mod:`dmha.errors`).
        """
        reply = self._unary(self._stubs.chat.Contextualize, self._chat_request(message, session_id, **options))
        return ChatResult(reply.text, reply.session_id, reply)

    def chat_stream(self, message: str, session_id: str = "", **options: Any) -> ChatStream:
        """Send a message and stream the reply.

        Returns:
            A :class:`ChatStream`: iterate it for deltas, then read ``.result``.
        """
        call = self._stubs.chat.Chat(
            self._chat_request(message, session_id, **options), metadata=self._metadata(), timeout=self.timeout
        )
        return ChatStream(call, call)

    # -- sessions -----------------------------------------------------------------

    def list_sessions(self) -> list[session_pb2.SessionSummary]:
        """The caller's sessions, most recent first."""
        return list(self._unary(self._stubs.sessions.ListSessions, session_pb2.ListSessionsRequest()).sessions)

    def get_session(self, session_id: str) -> session_pb2.Session:
        """A session's turns. Raises NotFound for unknown (or other users') ids."""
        return self._unary(self._stubs.sessions.GetSession, session_pb2.GetSessionRequest(session_id=session_id))

    def delete_session(self, session_id: str) -> None:
        """Forget a session. Raises NotFound for unknown (or other users') ids."""
        self._unary(self._stubs.sessions.DeleteSession, session_pb2.DeleteSessionRequest(session_id=session_id))

    # -- auth and health ----------------------------------------------------------

    def issue_token(self, api_key: str, user_id: str, roles: tuple[str, ...] = ("user",), ttl_seconds: int = 0) -> str:
        """Mint a token with the server's admin API key; also used by this client afterwards."""
        req = auth_pb2.IssueTokenRequest(api_key=api_key, user_id=user_id, roles=list(roles), ttl_seconds=ttl_seconds)
        return self._unary(self._stubs.auth.IssueToken, req).token

    def health(self, service: str = "") -> str:
        """The server's health status name, e.g. ``SERVING``."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
