"""The gateway application: routes, error handling, request ids, the shared gRPC channel.

``create_app(GatewaySettings(address=...))`` returns a Starlette app for any ASGI
server; ``dmha gateway`` runs it with uvicorn. The app opens one gRPC channel to
the DMHA server on startup and closes it on shutdown; it has no other state.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dmha_client import AsyncDMHAClient, RetryPolicy
from dmha_gateway import metrics, openai_routes, web_routes
from dmha_gateway.errors import APIError

__all__ = ["DEFAULT_GATEWAY_PORT", "GatewaySettings", "create_app"]

log = logging.getLogger("dmha_gateway")

DEFAULT_GATEWAY_PORT = 8080

# The page loads only its own files and talks only to this origin.
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway runs.

    Args:
        address: the DMHA gRPC server, ``host:port`` (None: ``$DMHA_ADDRESS``, else
            127.0.0.1:50051, as every ``dmha`` command).
        max_body_bytes: largest request body read (413 beyond; the server's own
            message limit, 8 KiB by default, is checked by the server).
        timeout: deadline of each gRPC call in seconds (a non-streamed reply
            included); streams end when the client goes away.
        allow_origins: origins allowed to call the API from other pages (CORS);
            empty: same origin only.
    """

    address: str | None = None
    max_body_bytes: int = 1 << 20
    timeout: float = 600.0
    allow_origins: tuple[str, ...] = field(default=())


class _Edge:
    """Pure ASGI middleware (streams pass through untouched): request id in and out,
    security headers, one log line and metrics per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"content-security-policy", _PAGE_POLICY.encode()))
                message = {**message, "headers": headers}
                # The endpoint's name, never the raw path: label values must stay few.
                endpoint = scope.get("endpoint")
                route = "unmatched" if endpoint is None else getattr(endpoint, "__name__", "static")
                elapsed = time.perf_counter() - start
                metrics.observe_request(route, status, elapsed)
                log.info(
                    "%s %s -> %d in %.0f ms (request id %s)",
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                    rid,
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return APIError(exc.status_code, message, "invalid_request_error", code).response(exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A gateway bug: logged with its traceback by the server; the caller gets no internals.
    rid = request.scope.get("state", {}).get("request_id", "-")
    log.error("unexpected error (request id %s)", rid, exc_info=exc)
    return APIError(500, f"internal error in the gateway (request id {rid})", "server_error", "internal").response()


def create_app(settings: GatewaySettings | None = None) -> Starlette:
    """The gateway as an ASGI application.

    Args:
        settings: where the gRPC server is and the gateway's limits (default: local server).

    Returns:
        The Starlette app. Its lifespan opens the gRPC channel; run it under an
        ASGI server that runs lifespans (uvicorn does).
    """
    cfg = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One attempt per call: an OpenAI client retries 503s itself, with backoff.
        client = AsyncDMHAClient(cfg.address, "", timeout=cfg.timeout, retry=RetryPolicy(attempts=1))
        app.state.client = client
        try:
            yield
        finally:
            await client.close()

    routes = [
        Route("/", web_routes.index, methods=["GET"]),
        Route("/healthz", web_routes.health, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
        Route("/v1/models", openai_routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_routes.retrieve_model, methods=["GET"]),
        Route("/dmha/v1/sessions", web_routes.list_sessions, methods=["GET"]),
        Route("/dmha/v1/sessions/{session_id}", web_routes.get_session, methods=["GET"]),
        Route("/dmha/v1/sessions/{session_id}", web_routes.delete_session, methods=["DELETE"]),
        Route("/dmha/v1/events", web_routes.list_events, methods=["GET"]),
        Route("/dmha/v1/feedback", web_routes.submit_feedback, methods=["POST"]),
        Route("/dmha/v1/jobs/{job_id}", web_routes.get_job, methods=["GET"]),
        Route("/dmha/v1/jobs/{job_id}/watch", web_routes.watch_job, methods=["GET"]),
        Mount("/static", StaticFiles(directory=web_routes.STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(_Edge)]
    if cfg.allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cfg.allow_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "x-dmha-session", "x-request-id"],
                expose_headers=["x-dmha-session", "x-request-id"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.settings = cfg
    return app
