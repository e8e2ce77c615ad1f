"""The blocking SDK client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dmha_client._base import FINAL_STATES, HEALTH_PARTS, BaseClient, ChatResult, Requests
from dmha_client._stubs import Stubs
from dmha_client.errors import DeadlineExceeded, NotFound, from_rpc_error, is_retryable
from dmha_client.sticky import StickyChannel
from dmha_proto.v1 import (
    chat_pb2,
    knowledge_pb2,
    learning_pb2,
    memory_pb2,
    metacognition_pb2,
    session_pb2,
)

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
        self._channel = (
            grpc.insecure_channel(self._target, options=self._channel_options)
            if self._replicas is None
            else StickyChannel(self._replicas, self._channel_options)
        )
        self._stubs = Stubs(self._channel)

    def __enter__(self) -> DMHAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (not one borrowed through :meth:`for_request`)."""
        if self._owns_channel:
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
            **options: temperature, top_p, max_new_tokens, seed, stop.

        Returns:
            The reply text, session id and full ChatReply.

        Raises:
            DMHAError: a subclass per status code (see :mod:`dmha_client.errors`).
        """
        reply = self._unary(self._stubs.chat.Contextualize, Requests.chat(message, session_id, **options))
        return ChatResult(reply.text, reply.session_id, reply)

    def chat_stream(self, message: str, session_id: str = "", **options: Any) -> ChatStream:
        """Send a message and stream the reply.

        Returns:
            A :class:`ChatStream`: iterate it for deltas, then read ``.result``.
        """
        call = self._stubs.chat.Chat(
            Requests.chat(message, session_id, **options), metadata=self._metadata(), timeout=self.timeout
        )
        return ChatStream(call, call)

    # -- sessions -----------------------------------------------------------------

    def list_sessions(self) -> list[session_pb2.SessionSummary]:
        """The caller's sessions, most recent first."""
        return list(self._unary(self._stubs.sessions.ListSessions, Requests.list_sessions()).sessions)

    def get_session(self, session_id: str) -> session_pb2.Session:
        """A session's turns. Raises NotFound for unknown (or other users') ids."""
        return self._unary(self._stubs.sessions.GetSession, Requests.get_session(session_id))

    def delete_session(self, session_id: str) -> None:
        """Forget a session. Raises NotFound for unknown (or other users') ids."""
        self._unary(self._stubs.sessions.DeleteSession, Requests.delete_session(session_id))

    # -- long-term memory ---------------------------------------------------------

    def memory_search(self, query: str, k: int = 10) -> list[memory_pb2.ScoredMemory]:
        """The caller's memories most relevant to ``query``, with scores and why."""
        return list(self._unary(self._stubs.memory.Search, Requests.memory_search(query, k)).results)

    def memory_list(
        self, page_size: int = 50, page_token: str = "", kind: str = "", session_id: str = ""
    ) -> memory_pb2.ListMemoriesResponse:
        """One page of the caller's memories, newest first."""
        req = Requests.memory_list(page_size, page_token, kind, session_id)
        return self._unary(self._stubs.memory.List, req)

    def memory_get(self, memory_id: str) -> memory_pb2.Memory:
        """One memory. Raises NotFound for unknown (or other users') ids."""
        return self._unary(self._stubs.memory.Get, Requests.memory_get(memory_id))

    def memory_delete(self, *, memory_id: str = "", session_id: str = "", everything: bool = False) -> int:
        """Delete one memory, a session's memories, or all of the caller's; returns how many."""
        return self._unary(self._stubs.memory.Delete, Requests.memory_delete(memory_id, session_id, everything)).deleted

    def memory_export(self) -> Iterator[bytes]:
        """All of the caller's memories as JSON-lines chunks."""
        try:
            for chunk in self._stubs.memory.Export(
                Requests.memory_export(), metadata=self._metadata(), timeout=self.timeout
            ):
                yield chunk.jsonl
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def memory_recluster(self) -> memory_pb2.ReclusterResponse:
        """Re-cluster the caller's memories now."""
        return self._unary(self._stubs.memory.Recluster, Requests.memory_recluster())

    def memory_stats(self) -> memory_pb2.MemoryStats:
        """Counts of the caller's memories."""
        return self._unary(self._stubs.memory.Stats, Requests.memory_stats())

    # -- online learning ----------------------------------------------------------

    def submit_feedback(self, input_text: str, target_text: str) -> learning_pb2.SubmitFeedbackResponse:
        """For ``input_text`` the answer is ``target_text``: a training job (trainer/admin) or a candidate (user)."""
        req = Requests.submit_feedback(input_text, target_text)
        return self._unary(self._stubs.feedback.Submit, req)

    def get_job(self, job_id: str) -> learning_pb2.Job:
        """A job's current state."""
        return self._unary(self._stubs.feedback.GetJob, Requests.get_job(job_id))

    def watch_job(self, job_id: str) -> Iterator[learning_pb2.Job]:
        """Progress events until the job's final state."""
        try:
            yield from self._stubs.feedback.WatchJob(
                Requests.get_job(job_id), metadata=self._metadata(), timeout=self.timeout
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def wait_job(self, job_id: str, timeout: float | None = None) -> learning_pb2.Job:
        """Block until the job is final (deployed, rejected, failed); returns it.

        Raises:
            DeadlineExceeded: not final within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.state in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"job {job_id} is still {job.state} after {timeout}s")
            time.sleep(0.5)

    def list_candidates(self) -> list[learning_pb2.Job]:
        """User feedback awaiting review (trainer/admin)."""
        return list(self._unary(self._stubs.feedback.ListCandidates, Requests.list_candidates()).candidates)

    def promote_candidate(self, job_id: str) -> learning_pb2.SubmitFeedbackResponse:
        """Queue a candidate for training (trainer/admin)."""
        return self._unary(self._stubs.feedback.PromoteCandidate, Requests.promote_candidate(job_id))

    def list_versions(self) -> list[learning_pb2.ModelVersion]:
        """Model versions, oldest first; ``live`` marks the served one."""
        return list(self._unary(self._stubs.models.ListVersions, Requests.list_versions()).versions)

    def get_version(self, version_id: str) -> learning_pb2.ModelVersion:
        """One model version."""
        return self._unary(self._stubs.models.GetVersion, Requests.get_version(version_id))

    def rollback(self, to_version: str = "") -> learning_pb2.ModelVersion:
        """Serve the live version's parent (or ``to_version``) again (admin)."""
        return self._unary(self._stubs.models.Rollback, Requests.rollback(to_version))

    def promote_version(self, version_id: str) -> learning_pb2.ModelVersion:
        """Serve ``version_id`` (admin)."""
        return self._unary(self._stubs.models.Promote, Requests.promote_version(version_id))

    def get_insights(self) -> dict[str, Any]:
        """What the causal meta-learner knows (trainer/admin).

        Returns:
            The insights document (format ``dmha-meta-insights/1``): ``mechanisms``
            (which layers carried edits: strength, effectiveness, confidence, edits),
            ``learner_versions``, the ``updates``/``deployed``/``repairs`` counts and
            every update ``record``. Save it as JSON to import elsewhere.

        Raises:
            PermissionDenied: the caller is neither trainer nor admin.
        """
        return Requests.insights_doc(self._unary(self._stubs.models.GetInsights, Requests.get_insights()))

    def import_insights(self, doc: Mapping[str, Any]) -> int:
        """Add another deployment's update records to the meta-learner's replay data (admin).

        Args:
            doc: a document as :meth:`get_insights` returns it.

        Returns:
            Records added; records already present (same job and attempt) are skipped.

        Raises:
            InvalidArgument: the document is malformed (``field`` names the bad part, e.g.
                ``insights.records[3].outcome``) or larger than the server accepts.
            PermissionDenied: the caller is not admin.
        """
        return self._unary(self._stubs.models.ImportInsights, Requests.import_insights(doc)).added

    # -- knowledge base -----------------------------------------------------------

    def kb_tell(self, text: str, scope: str = "", session_id: str = "") -> knowledge_pb2.TellResponse:
        """Add statements; rejected ones come back with their conflict cores."""
        req = Requests.kb_tell(text, scope, session_id)
        return self._unary(self._stubs.knowledge.Tell, req)

    def kb_ask(self, statement: str, session_id: str = "") -> knowledge_pb2.AskResponse:
        """ENTAILED / CONTRADICTED / UNKNOWN with support."""
        return self._unary(self._stubs.knowledge.Ask, Requests.kb_ask(statement, session_id))

    def kb_list(self, kind: str = "", status: str = "") -> list[knowledge_pb2.Statement]:
        """The caller's statements (optionally one kind / status)."""
        req = Requests.kb_list(kind, status)
        return list(self._unary(self._stubs.knowledge.ListStatements, req).statements)

    def kb_retract(self, statement_id: str) -> None:
        """Remove a statement."""
        self._unary(self._stubs.knowledge.Retract, Requests.kb_retract(statement_id))

    def kb_conflicts(self) -> list[knowledge_pb2.Rejection]:
        """Rejected statements with their conflict cores."""
        return list(self._unary(self._stubs.knowledge.ListConflicts, Requests.kb_conflicts()).conflicts)

    def kb_explain(self, statement_id: str) -> knowledge_pb2.ExplainResponse:
        """Why a statement holds or was rejected."""
        return self._unary(self._stubs.knowledge.Explain, Requests.kb_explain(statement_id))

    def monitor_events(
        self, limit: int = 50, session_id: str = "", include_passing: bool = False
    ) -> list[metacognition_pb2.RecordedEvent]:
        """The consistency monitor's firings on the caller's turns, newest first.

        With ``include_passing``, also the score of every reply that passed (outcome
        ``passed``): each reviewed reply's score against the threshold.
        """
        req = Requests.monitor_events(limit, session_id, include_passing)
        return list(self._unary(self._stubs.metacognition.ListEvents, req).events)

    # -- auth and health ----------------------------------------------------------

    def issue_token(self, api_key: str, user_id: str, roles: tuple[str, ...] = ("user",), ttl_seconds: int = 0) -> str:
        """Mint a token with the server's admin API key; also used by this client afterwards."""
        req = Requests.issue_token(api_key, user_id, roles, ttl_seconds)
        return self._unary(self._stubs.auth.IssueToken, req).token

    def health(self, service: str = "") -> str:
        """The server's health status name, e.g. ``SERVING``.

        Args:
            service: "" for the whole server, a service name (``dmha.v1.ChatService``),
                or a part (``dmha.health.redis``, see :meth:`health_parts`).
        """
        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = self._unary(stub.Check, Requests.health(service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def health_parts(self) -> dict[str, str]:
        """Each part the server probes (Redis, Milvus, executor, generation, disk) and its status.

        Returns:
            ``{"redis": "SERVING", "disk": "NOT_SERVING", ...}``; parts the server does
            not run (Milvus with long-term memory off) are absent.
        """
        parts: dict[str, str] = {}
        for part in HEALTH_PARTS:
            try:
                parts[part] = self.health(f"dmha.health.{part}")
            except NotFound:
                continue
        return parts
