"""The one server interceptor: request id, authentication, rate limit, error mapping, metrics.

Every DMHA error class maps to one status code here and nowhere else. Anything
that is not a :class:`~dmha.errors.DMHAError` is a bug: it is logged with the
request id and the client gets INTERNAL without internals.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dmha.runtime import Authenticator, Limiter, Principal, bind_caller, errors, request_id, run_blocking
from dmha_server import metrics

__all__ = ["MAX_DETAIL_CHARS", "PUBLIC_PREFIXES", "ServiceInterceptor", "current_principal", "status_for"]

log = logging.getLogger(__name__)

# Callable without a token: health, reflection and token issuance.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/dmha.v1.AuthService/IssueToken",
)

_STATUS: dict[type[errors.DMHAError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Status details travel in HTTP/2 trailers (a few KiB at most): an error that echoes
# a 16 KiB id would fail as RESOURCE_EXHAUSTED instead of its real status.
MAX_DETAIL_CHARS = 512

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("dmha_principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served.

    Raises:
        Unauthenticated: called outside an authenticated RPC (a wiring bug, surfaced safely).
    """
    principal = _principal.get()
    if principal is None:
        raise errors.Unauthenticated("not authenticated")
    return principal


def status_for(exc: errors.DMHAError) -> grpc.StatusCode:
    """The status code of a DMHA error (most specific class first)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _detail(exc: BaseException) -> str:
    """The client-facing message, cut to ``MAX_DETAIL_CHARS`` (echoed input is truncated)."""
    text = str(exc)
    if len(text) <= MAX_DETAIL_CHARS:
        return text
    return f"{text[: MAX_DETAIL_CHARS - 30]}... ({len(text)} characters, truncated)"


class _Undecodable:
    """Stands in for a request whose bytes did not parse (answered INVALID_ARGUMENT)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so that garbage becomes INVALID_ARGUMENT, not UNKNOWN
    (gRPC turns an exception raised while deserialising into UNKNOWN with a traceback)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises on bad bytes
            return _Undecodable(exc)

    return parse


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument("request", f"cannot be decoded ({type(request.error).__name__})")


_ISSUE_TOKEN = "/dmha.v1.AuthService/IssueToken"


def _peer_address(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` -> ``ipv4:1.2.3.4`` (one bucket per host, whatever the port)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _bearer(metadata: tuple[tuple[str, Any], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _incoming_request_id(metadata: tuple[tuple[str, Any], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return uuid.uuid4().hex[:16]


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler.

    Args:
        auth: verifies bearer tokens.
        limiter: per-user rate limit.
        token_limiter: per-address rate limit of IssueToken (None: unlimited).
    """

    def __init__(self, auth: Authenticator, limiter: Limiter, token_limiter: Limiter | None = None) -> None:
        self._auth = auth
        self._limiter = limiter
        self._token_limiter = token_limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        public = method.startswith(PUBLIC_PREFIXES)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, public, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, public, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # streaming-request methods are only reflection's, which is public

    async def _enter(self, method: str, public: bool, context: grpc.aio.ServicerContext) -> str:
        """Set request id and principal for this call; returns the request id."""
        metadata = context.invocation_metadata()
        rid = _incoming_request_id(metadata)
        request_id.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        if method == _ISSUE_TOKEN and self._token_limiter is not None:
            # Unauthenticated by nature, so the brake is keyed by address, not user.
            peer = _peer_address(context.peer())
            self._token_limiter.refuse_known(peer)
            await run_blocking(self._token_limiter.check, peer)
        if not public:
            principal = self._auth.verify(_bearer(metadata))
            # A caller already known to be over its limit is refused here, on the loop:
            # one hammering past its limit must not cost a thread and a Redis round trip
            # per request (each took ~2 ms of server CPU, on the executor others need).
            self._limiter.refuse_known(principal.user_id)
            # The bucket lives in Redis (shared by every replica): a round trip, off the loop.
            await run_blocking(self._limiter.check, principal.user_id)
            _principal.set(principal)
            # The user's blocking work is charged to them: one user cannot fill the executor.
            bind_caller(principal.user_id)
        return rid

    async def _fail(self, method: str, context: grpc.aio.ServicerContext, exc: BaseException, rid: str) -> None:
        if isinstance(exc, errors.DMHAError):
            code = status_for(exc)
            detail = _detail(exc)
            log.info("%s -> %s: %s", method, code.name, detail)
            metrics.observe_code(method, code.name)
            await context.abort(code, detail)
        log.error("%s failed (request id %s)", method, rid, exc_info=exc)
        metrics.observe_code(method, "INTERNAL")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

    def _wrap_unary(self, method: str, public: bool, inner: Callable[..., Awaitable[Any]]):
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            rid = "-"
            try:
                rid = await self._enter(method, public, context)
                _check_decoded(request)
                response = await inner(request, context)
            except (grpc.aio.AbortError, grpc.RpcError):
                raise  # a servicer aborted on purpose
            except Exception as exc:
                await self._fail(method, context, exc, rid)
                raise  # unreachable: abort raises
            metrics.observe_code(method, "OK")
            metrics.observe_latency(method, time.perf_counter() - start)
            return response

        return unary

    def _wrap_stream(self, method: str, public: bool, inner: Callable[..., AsyncIterator[Any]]):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            rid = "-"
            try:
                rid = await self._enter(method, public, context)
                _check_decoded(request)
                async for response in inner(request, context):
                    yield response
            except (grpc.aio.AbortError, grpc.RpcError):
                raise
            except Exception as exc:
                await self._fail(method, context, exc, rid)
                raise
            metrics.observe_code(method, "OK")
            metrics.observe_latency(method, time.perf_counter() - start)

        return stream
