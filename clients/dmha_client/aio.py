"""The asyncio SDK client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dmha_client._base import FINAL_STATES, HEALTH_PARTS, BaseClient, ChatResult, Requests
from dmha_client._stubs import Stubs
from dmha_client.errors import Cancelled, DeadlineExceeded, NotFound, from_rpc_error, is_retryable
from dmha_client.sticky import AsyncStickyChannel
from dmha_proto.v1 import (
    knowledge_pb2,
    learning_pb2,
    memory_pb2,
    metacognition_pb2,
    session_pb2,
)

__all__ = ["AsyncChatStream", "AsyncDMHAClient"]

T = TypeVar("T")


class AsyncChatStream:
    """``async for`` the text deltas; ``result`` holds the final :class:`ChatResult` afterwards."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled_here = False
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for response in self._call:
                if response.HasField("final"):
                    final = response.final
                    self.result = ChatResult(final.text, final.session_id, final)
                else:
                    yield response.delta
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        except asyncio.CancelledError:
            # grpc.aio reports a call we cancelled ourselves as CancelledError; only
            # that case is translated, a cancelled *task* must stay cancelled.
            if self._cancelled_here:
                raise Cancelled("the stream was cancelled by this client") from None
            raise

    def cancel(self) -> None:
        """Stop generation on the server; iterating further raises :class:`~dmha_client.errors.Cancelled`."""
        self._cancelled_here = True
        self._call.cancel()


class AsyncDMHAClient(BaseClient):
    """Asyncio DMHA client; see :class:`~dmha_client._base.BaseClient` for arguments.

    Methods mirror :class:`~dmha_client.client.DMHAClient`. Use ``async with``, or
    ``await close()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = (
            grpc.aio.insecure_channel(self._target, options=self._channel_options)
            if self._replicas is None
            else AsyncStickyChannel(self._replicas, self._channel_options)
        )
        self._stubs = Stubs(self._channel)

    async def __aenter__(self) -> AsyncDMHAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (not one borrowed through :meth:`for_request`)."""
        if self._owns_channel:
            await self._channel.close()

    async def _unary(self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, metadata=self._metadata(), timeout=timeout or self.timeout)
            except grpc.RpcError as err:
                if is_retryable(err) and attempt < self.retry.attempts:
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                raise from_rpc_error(err) from None

    async def chat(self, message: str, session_id: str = "", **options: Any) -> ChatResult:
        """See :meth:`DMHAClient.chat`."""
        reply = await self._unary(self._stubs.chat.Contextualize, Requests.chat(message, session_id, **options))
        return ChatResult(reply.text, reply.session_id, reply)

    def chat_stream(self, message: str, session_id: str = "", **options: Any) -> AsyncChatStream:
        """See :meth:`DMHAClient.chat_stream`."""
        call = self._stubs.chat.Chat(
            Requests.chat(message, session_id, **options), metadata=self._metadata(), timeout=self.timeout
        )
        return AsyncChatStream(call)

    async def list_sessions(self) -> list[session_pb2.SessionSummary]:
        """See :meth:`DMHAClient.list_sessions`."""
        return list((await self._unary(self._stubs.sessions.ListSessions, Requests.list_sessions())).sessions)

    async def get_session(self, session_id: str) -> session_pb2.Session:
        """See :meth:`DMHAClient.get_session`."""
        return await self._unary(self._stubs.sessions.GetSession, Requests.get_session(session_id))

    async def delete_session(self, session_id: str) -> None:
        """See :meth:`DMHAClient.delete_session`."""
        await self._unary(self._stubs.sessions.DeleteSession, Requests.delete_session(session_id))

    async def memory_search(self, query: str, k: int = 10) -> list[memory_pb2.ScoredMemory]:
        """See :meth:`DMHAClient.memory_search`."""
        req = Requests.memory_search(query, k)
        return list((await self._unary(self._stubs.memory.Search, req)).results)

    async def memory_list(
        self, page_size: int = 50, page_token: str = "", kind: str = "", session_id: str = ""
    ) -> memory_pb2.ListMemoriesResponse:
        """See :meth:`DMHAClient.memory_list`."""
        req = Requests.memory_list(page_size, page_token, kind, session_id)
        return await self._unary(self._stubs.memory.List, req)

    async def memory_get(self, memory_id: str) -> memory_pb2.Memory:
        """See :meth:`DMHAClient.memory_get`."""
        return await self._unary(self._stubs.memory.Get, Requests.memory_get(memory_id))

    async def memory_delete(self, *, memory_id: str = "", session_id: str = "", everything: bool = False) -> int:
        """See :meth:`DMHAClient.memory_delete`."""
        return (
            await self._unary(self._stubs.memory.Delete, Requests.memory_delete(memory_id, session_id, everything))
        ).deleted

    async def memory_export(self) -> AsyncIterator[bytes]:
        """See :meth:`DMHAClient.memory_export`."""
        try:
            async for chunk in self._stubs.memory.Export(
                Requests.memory_export(), metadata=self._metadata(), timeout=self.timeout
            ):
                yield chunk.jsonl
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def memory_recluster(self) -> memory_pb2.ReclusterResponse:
        """See :meth:`DMHAClient.memory_recluster`."""
        return await self._unary(self._stubs.memory.Recluster, Requests.memory_recluster())

    async def memory_stats(self) -> memory_pb2.MemoryStats:
        """See :meth:`DMHAClient.memory_stats`."""
        return await self._unary(self._stubs.memory.Stats, Requests.memory_stats())

    async def submit_feedback(self, input_text: str, target_text: str) -> learning_pb2.SubmitFeedbackResponse:
        """See :meth:`DMHAClient.submit_feedback`."""
        req = Requests.submit_feedback(input_text, target_text)
        return await self._unary(self._stubs.feedback.Submit, req)

    async def get_job(self, job_id: str) -> learning_pb2.Job:
        """See :meth:`DMHAClient.get_job`."""
        return await self._unary(self._stubs.feedback.GetJob, Requests.get_job(job_id))

    async def watch_job(self, job_id: str) -> AsyncIterator[learning_pb2.Job]:
        """See :meth:`DMHAClient.watch_job`."""
        try:
            async for job in self._stubs.feedback.WatchJob(
                Requests.get_job(job_id), metadata=self._metadata(), timeout=self.timeout
            ):
                yield job
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def wait_job(self, job_id: str, timeout: float | None = None) -> learning_pb2.Job:
        """See :meth:`DMHAClient.wait_job`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            job = await self.get_job(job_id)
            if job.state in FINAL_STATES:
                return job
            if deadline is not None and loop.time() > deadline:
                raise DeadlineExceeded(f"job {job_id} is still {job.state} after {timeout}s")
            await asyncio.sleep(0.5)

    async def list_candidates(self) -> list[learning_pb2.Job]:
        """See :meth:`DMHAClient.list_candidates`."""
        return list((await self._unary(self._stubs.feedback.ListCandidates, Requests.list_candidates())).candidates)

    async def promote_candidate(self, job_id: str) -> learning_pb2.SubmitFeedbackResponse:
        """See :meth:`DMHAClient.promote_candidate`."""
        req = Requests.promote_candidate(job_id)
        return await self._unary(self._stubs.feedback.PromoteCandidate, req)

    async def list_versions(self) -> list[learning_pb2.ModelVersion]:
        """See :meth:`DMHAClient.list_versions`."""
        return list((await self._unary(self._stubs.models.ListVersions, Requests.list_versions())).versions)

    async def get_version(self, version_id: str) -> learning_pb2.ModelVersion:
        """See :meth:`DMHAClient.get_version`."""
        return await self._unary(self._stubs.models.GetVersion, Requests.get_version(version_id))

    async def rollback(self, to_version: str = "") -> learning_pb2.ModelVersion:
        """See :meth:`DMHAClient.rollback`."""
        return await self._unary(self._stubs.models.Rollback, Requests.rollback(to_version))

    async def promote_version(self, version_id: str) -> learning_pb2.ModelVersion:
        """See :meth:`DMHAClient.promote_version`."""
        return await self._unary(self._stubs.models.Promote, Requests.promote_version(version_id))

    async def get_insights(self) -> dict[str, Any]:
        """See :meth:`DMHAClient.get_insights`."""
        return Requests.insights_doc(await self._unary(self._stubs.models.GetInsights, Requests.get_insights()))

    async def import_insights(self, doc: Mapping[str, Any]) -> int:
        """See :meth:`DMHAClient.import_insights`."""
        return (await self._unary(self._stubs.models.ImportInsights, Requests.import_insights(doc))).added

    async def kb_tell(self, text: str, scope: str = "", session_id: str = "") -> knowledge_pb2.TellResponse:
        """See :meth:`DMHAClient.kb_tell`."""
        req = Requests.kb_tell(text, scope, session_id)
        return await self._unary(self._stubs.knowledge.Tell, req)

    async def kb_ask(self, statement: str, session_id: str = "") -> knowledge_pb2.AskResponse:
        """See :meth:`DMHAClient.kb_ask`."""
        req = Requests.kb_ask(statement, session_id)
        return await self._unary(self._stubs.knowledge.Ask, req)

    async def kb_list(self, kind: str = "", status: str = "") -> list[knowledge_pb2.Statement]:
        """See :meth:`DMHAClient.kb_list`."""
        req = Requests.kb_list(kind, status)
        return list((await self._unary(self._stubs.knowledge.ListStatements, req)).statements)

    async def kb_retract(self, statement_id: str) -> None:
        """See :meth:`DMHAClient.kb_retract`."""
        await self._unary(self._stubs.knowledge.Retract, Requests.kb_retract(statement_id))

    async def kb_conflicts(self) -> list[knowledge_pb2.Rejection]:
        """See :meth:`DMHAClient.kb_conflicts`."""
        req = Requests.kb_conflicts()
        return list((await self._unary(self._stubs.knowledge.ListConflicts, req)).conflicts)

    async def kb_explain(self, statement_id: str) -> knowledge_pb2.ExplainResponse:
        """See :meth:`DMHAClient.kb_explain`."""
        return await self._unary(self._stubs.knowledge.Explain, Requests.kb_explain(statement_id))

    async def monitor_events(
        self, limit: int = 50, session_id: str = "", include_passing: bool = False
    ) -> list[metacognition_pb2.RecordedEvent]:
        """See :meth:`DMHAClient.monitor_events`."""
        req = Requests.monitor_events(limit, session_id, include_passing)
        return list((await self._unary(self._stubs.metacognition.ListEvents, req)).events)

    async def issue_token(
        self, api_key: str, user_id: str, roles: tuple[str, ...] = ("user",), ttl_seconds: int = 0
    ) -> str:
        """See :meth:`DMHAClient.issue_token`."""
        req = Requests.issue_token(api_key, user_id, roles, ttl_seconds)
        return (await self._unary(self._stubs.auth.IssueToken, req)).token

    async def health(self, service: str = "") -> str:
        """See :meth:`DMHAClient.health`."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = await self._unary(stub.Check, Requests.health(service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def health_parts(self) -> dict[str, str]:
        """See :meth:`DMHAClient.health_parts`."""
        parts: dict[str, str] = {}
        for part in HEALTH_PARTS:
            try:
                parts[part] = await self.health(f"dmha.health.{part}")
            except NotFound:
                continue
        return parts
