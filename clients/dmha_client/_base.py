"""What the sync and asyncio clients share: settings, metadata, requests, retries."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from grpc_health.v1 import health_pb2

from dmha_client.errors import InvalidArgument
from dmha_client.sticky import Replicas
from dmha_proto.v1 import (
    auth_pb2,
    chat_pb2,
    common_pb2,
    knowledge_pb2,
    learning_pb2,
    memory_pb2,
    metacognition_pb2,
    session_pb2,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "BALANCED_OPTIONS",
    "DEFAULT_ADDRESS",
    "FINAL_STATES",
    "HEALTH_PARTS",
    "BaseClient",
    "ChatResult",
    "Requests",
    "RetryPolicy",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
"""gRPC reconnects to a server that was down within 5 s of its return (the library's
default backoff grows to 120 s, too long for a gateway that must recover by itself)."""
BALANCED_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.lb_policy_name", "round_robin"),)
"""Over several replicas each call goes to the next ready one, and a replica that is
down is skipped until it is back (its connection is retried in the background)."""
FINAL_STATES = frozenset({"deployed", "rejected", "failed", "candidate"})
"""Job states that will not change by themselves (a candidate waits for a trainer)."""
HEALTH_PARTS = ("redis", "milvus", "executor", "generation", "disk")
"""The parts a server reports in grpc.health.v1 as ``dmha.health.<part>`` (milvus only
when long-term memory is on)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for UNAVAILABLE only."""

    attempts: int = 4
    initial: float = 0.2
    maximum: float = 3.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class ChatResult:
    """A finished chat turn as the SDK returns it (the wire ChatReply is in ``reply``)."""

    text: str
    session_id: str
    reply: chat_pb2.ChatReply


def _split(address: str | Sequence[str]) -> list[str]:
    items = address.split(",") if isinstance(address, str) else list(address)
    return [a.strip() for a in items if a.strip()]


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument("address", f"{address!r} is not host:port")
    return host.strip("[]"), port


def channel_target(address: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one server address, or for several replicas.

    Several addresses (a sequence, or one string with commas) become one static list
    that the channel balances over; host names among them are resolved to IPv4 once,
    here (give a ``dns:///name:port`` target instead to follow DNS changes). A
    ``dns:///`` target is balanced over every address the name resolves to.

    Args:
        address: ``host:port``, ``dns:///host:port``, ``"h1:p1,h2:p2"`` or a list.

    Returns:
        ``(target, balanced)``: the channel target, and whether it spans replicas.

    Raises:
        InvalidArgument: an empty list, or an entry that is not ``host:port``.
    """
    items = _split(address)
    if not items:
        raise InvalidArgument("address", "at least one host:port is required")
    if len(items) == 1:
        return items[0], items[0].startswith("dns:")
    ips: list[str] = []
    v6 = False
    for item in items:
        host, port = _host_port(item)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port), socket.AF_INET)[0][4][0])
            except OSError as exc:
                raise InvalidArgument("address", f"cannot resolve {host!r} in {item!r} ({exc})") from None
        v6 = v6 or ip.version == 6
        ips.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if v6 and any(not a.startswith("[") for a in ips):
        raise InvalidArgument("address", "give either IPv4 or IPv6 replicas, not both")
    return ("ipv6:" if v6 else "ipv4:") + ",".join(ips), True


def sticky_replicas(address: str | Sequence[str], down_seconds: float = 5.0) -> Replicas | None:
    """The replicas to route between by user, or None when there is only one.

    Args:
        address: the addresses as :class:`BaseClient` takes them.
        down_seconds: how long a replica that answered UNAVAILABLE is passed over.

    Returns:
        The replicas (each address as given: its own channel resolves the name), or
        None for a single ``host:port``.

    Raises:
        InvalidArgument: a ``dns:///`` target (the replicas behind a name are not
            listed, so users cannot be assigned to them), an empty list, or an entry
            that is not ``host:port``.
    """
    items = _split(address)
    if not items:
        raise InvalidArgument("address", "at least one host:port is required")
    if any(item.startswith("dns:") for item in items):
        raise InvalidArgument("address", "sticky routing needs the replicas listed as host:port, not a dns:/// target")
    for item in items:
        _host_port(item)
    return Replicas(items, down_seconds) if len(items) > 1 else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class BaseClient:
    """Settings and request building shared by :class:`DMHAClient` and :class:`AsyncDMHAClient`.

    Args:
        address: ``host:port``; or several replicas as a list or a comma-separated
            string (``"10.0.0.1:50051,10.0.0.2:50051"``), or ``dns:///name:port``
            for every address a name resolves to: calls are then spread round-robin
            and a replica that is down is skipped (a call it failed with UNAVAILABLE
            is retried on another, per ``retry``). Default ``$DMHA_ADDRESS`` (the same
            forms) or 127.0.0.1:50051.
        token: bearer JWT; default ``$DMHA_TOKEN``.
        timeout: default per-call deadline in seconds (None = no deadline).
        retry: backoff policy for UNAVAILABLE.
        sticky: over several listed replicas, send each user's calls to one of them
            (rendezvous hashing of the token's subject; a unary call that meets
            UNAVAILABLE moves at once to the user's next replica), so each replica
            keeps hot indexes for its share of the users only. Default
            ``$DMHA_STICKY`` (``1``/``true``), else round-robin.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout: float | None = 120.0,
        retry: RetryPolicy | None = None,
        sticky: bool | None = None,
    ) -> None:
        given = address or os.environ.get("DMHA_ADDRESS") or DEFAULT_ADDRESS
        self.address = given if isinstance(given, str) else ",".join(given)
        """The address(es) as given (comma-separated when several)."""
        self._replicas = sticky_replicas(given) if (_env_flag("DMHA_STICKY") if sticky is None else sticky) else None
        """Set when calls are routed by user (each replica then has its own channel)."""
        if self._replicas is not None:
            self._target, balanced = "", False
        else:
            self._target, balanced = channel_target(given)
        self._channel_options: tuple[tuple[str, Any], ...] = CHANNEL_OPTIONS + (BALANCED_OPTIONS if balanced else ())
        self.token = token if token is not None else os.environ.get("DMHA_TOKEN", "")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.request_id = ""
        # A client made by for_request() borrows its parent's channel and never closes it.
        self._owns_channel = True

    def for_request(self, token: str, request_id: str = "") -> Self:
        """A client for one caller over this client's channel (a gateway serving many users).

        Opening a channel per HTTP request would cost a connection each time; the
        copy shares the channel and differs only in the metadata it sends.
        Closing the copy leaves the channel open.

        Args:
            token: the caller's bearer JWT.
            request_id: sent as ``x-request-id`` so the server logs the caller's id
                (at most 64 characters; "" lets the server pick one).

        Returns:
            The client.
        """
        other = copy.copy(self)
        other.token = token
        other.request_id = request_id
        other._owns_channel = False
        return other

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        metadata: list[tuple[str, str]] = []
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        if self.request_id:
            metadata.append(("x-request-id", self.request_id))
        return tuple(metadata)


class Requests:
    """One builder per RPC: the request message both clients send.

    Defaults, option packing and client-side checks live here once, so the sync and
    asyncio clients differ only in how they wait.
    """

    @staticmethod
    def chat(
        message: str,
        session_id: str = "",
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> chat_pb2.ChatRequest:
        """Chat / Contextualize; unset options stay unset (the server's defaults apply).

        ``stop``: up to 4 stop sequences; the reply ends before the first one it would contain.
        """
        options = common_pb2.GenerationOptions()
        if temperature is not None:
            options.temperature = temperature
        if top_p is not None:
            options.top_p = top_p
        if max_new_tokens is not None:
            options.max_new_tokens = max_new_tokens
        if seed is not None:
            options.seed = seed
        if stop:
            options.stop.extend(stop)
        return chat_pb2.ChatRequest(session_id=session_id, message=message, options=options)

    @staticmethod
    def list_sessions() -> session_pb2.ListSessionsRequest:
        """ListSessions."""
        return session_pb2.ListSessionsRequest()

    @staticmethod
    def get_session(session_id: str) -> session_pb2.GetSessionRequest:
        """GetSession."""
        return session_pb2.GetSessionRequest(session_id=session_id)

    @staticmethod
    def delete_session(session_id: str) -> session_pb2.DeleteSessionRequest:
        """DeleteSession."""
        return session_pb2.DeleteSessionRequest(session_id=session_id)

    @staticmethod
    def memory_search(query: str, k: int = 10) -> memory_pb2.SearchMemoryRequest:
        """MemoryService.Search."""
        return memory_pb2.SearchMemoryRequest(query=query, k=k)

    @staticmethod
    def memory_list(
        page_size: int = 50, page_token: str = "", kind: str = "", session_id: str = ""
    ) -> memory_pb2.ListMemoriesRequest:
        """MemoryService.List."""
        return memory_pb2.ListMemoriesRequest(
            page_size=page_size, page_token=page_token, kind=kind, session_id=session_id
        )

    @staticmethod
    def memory_get(memory_id: str) -> memory_pb2.GetMemoryRequest:
        """MemoryService.Get."""
        return memory_pb2.GetMemoryRequest(id=memory_id)

    @staticmethod
    def memory_delete(
        memory_id: str = "", session_id: str = "", everything: bool = False
    ) -> memory_pb2.DeleteMemoryRequest:
        """MemoryService.Delete with exactly one selector.

        Raises:
            InvalidArgument: none or several selectors given (checked before any call).
        """
        chosen = [bool(memory_id), bool(session_id), everything]
        if sum(chosen) != 1:
            raise InvalidArgument("selector", "give exactly one of memory_id, session_id or everything=True")
        if memory_id:
            return memory_pb2.DeleteMemoryRequest(id=memory_id)
        if session_id:
            return memory_pb2.DeleteMemoryRequest(session_id=session_id)
        return memory_pb2.DeleteMemoryRequest(all=True)

    @staticmethod
    def memory_export() -> memory_pb2.ExportMemoriesRequest:
        """MemoryService.Export."""
        return memory_pb2.ExportMemoriesRequest()

    @staticmethod
    def memory_recluster() -> memory_pb2.ReclusterRequest:
        """MemoryService.Recluster."""
        return memory_pb2.ReclusterRequest()

    @staticmethod
    def memory_stats() -> memory_pb2.MemoryStatsRequest:
        """MemoryService.Stats."""
        return memory_pb2.MemoryStatsRequest()

    @staticmethod
    def submit_feedback(input_text: str, target_text: str) -> learning_pb2.SubmitFeedbackRequest:
        """FeedbackService.Submit."""
        return learning_pb2.SubmitFeedbackRequest(input_text=input_text, target_text=target_text)

    @staticmethod
    def get_job(job_id: str) -> learning_pb2.GetJobRequest:
        """FeedbackService.GetJob and WatchJob."""
        return learning_pb2.GetJobRequest(job_id=job_id)

    @staticmethod
    def list_candidates() -> learning_pb2.ListCandidatesRequest:
        """FeedbackService.ListCandidates."""
        return learning_pb2.ListCandidatesRequest()

    @staticmethod
    def promote_candidate(job_id: str) -> learning_pb2.PromoteCandidateRequest:
        """FeedbackService.PromoteCandidate."""
        return learning_pb2.PromoteCandidateRequest(job_id=job_id)

    @staticmethod
    def list_versions() -> learning_pb2.ListVersionsRequest:
        """ModelService.ListVersions."""
        return learning_pb2.ListVersionsRequest()

    @staticmethod
    def get_version(version_id: str) -> learning_pb2.GetVersionRequest:
        """ModelService.GetVersion."""
        return learning_pb2.GetVersionRequest(id=version_id)

    @staticmethod
    def rollback(to_version: str = "") -> learning_pb2.RollbackRequest:
        """ModelService.Rollback ("" = the live version's parent)."""
        return learning_pb2.RollbackRequest(to_version=to_version)

    @staticmethod
    def promote_version(version_id: str) -> learning_pb2.PromoteRequest:
        """ModelService.Promote."""
        return learning_pb2.PromoteRequest(id=version_id)

    @staticmethod
    def get_insights() -> learning_pb2.GetInsightsRequest:
        """ModelService.GetInsights."""
        return learning_pb2.GetInsightsRequest()

    @staticmethod
    def import_insights(doc: Mapping[str, Any]) -> learning_pb2.ImportInsightsRequest:
        """ModelService.ImportInsights of a parsed document.

        Raises:
            InvalidArgument: ``doc`` is not JSON-serialisable (checked before any call).
        """
        try:
            text = json.dumps(doc, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument("insights_json", f"cannot be written as JSON: {exc}") from None
        return learning_pb2.ImportInsightsRequest(insights_json=text)

    @staticmethod
    def insights_doc(reply: learning_pb2.Insights) -> dict[str, Any]:
        """The document an Insights reply carries, parsed."""
        doc: dict[str, Any] = json.loads(reply.insights_json)
        return doc

    @staticmethod
    def kb_tell(text: str, scope: str = "", session_id: str = "") -> knowledge_pb2.TellRequest:
        """KnowledgeService.Tell."""
        return knowledge_pb2.TellRequest(text=text, scope=scope, session_id=session_id)

    @staticmethod
    def kb_ask(statement: str, session_id: str = "") -> knowledge_pb2.AskRequest:
        """KnowledgeService.Ask."""
        return knowledge_pb2.AskRequest(statement=statement, session_id=session_id)

    @staticmethod
    def kb_list(kind: str = "", status: str = "") -> knowledge_pb2.ListStatementsRequest:
        """KnowledgeService.ListStatements."""
        return knowledge_pb2.ListStatementsRequest(kind=kind, status=status)

    @staticmethod
    def kb_retract(statement_id: str) -> knowledge_pb2.RetractRequest:
        """KnowledgeService.Retract."""
        return knowledge_pb2.RetractRequest(id=statement_id)

    @staticmethod
    def kb_conflicts() -> knowledge_pb2.ListConflictsRequest:
        """KnowledgeService.ListConflicts."""
        return knowledge_pb2.ListConflictsRequest()

    @staticmethod
    def kb_explain(statement_id: str) -> knowledge_pb2.ExplainRequest:
        """KnowledgeService.Explain."""
        return knowledge_pb2.ExplainRequest(id=statement_id)

    @staticmethod
    def monitor_events(
        limit: int = 50, session_id: str = "", include_passing: bool = False
    ) -> metacognition_pb2.ListEventsRequest:
        """MetacognitionService.ListEvents."""
        return metacognition_pb2.ListEventsRequest(limit=limit, session_id=session_id, include_passing=include_passing)

    @staticmethod
    def issue_token(
        api_key: str, user_id: str, roles: Sequence[str] = ("user",), ttl_seconds: int = 0
    ) -> auth_pb2.IssueTokenRequest:
        """AuthService.IssueToken."""
        return auth_pb2.IssueTokenRequest(api_key=api_key, user_id=user_id, roles=list(roles), ttl_seconds=ttl_seconds)

    @staticmethod
    def health(service: str = "") -> health_pb2.HealthCheckRequest:
        """grpc.health.v1.Health.Check ("" = the whole server)."""
        return health_pb2.HealthCheckRequest(service=service)
