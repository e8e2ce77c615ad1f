"""Prometheus metrics of the HTTP gateway (``GET /metrics`` on the gateway's port)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["metrics_endpoint", "observe_first_token", "observe_request"]

_REQUESTS = Counter("dmha_gateway_requests_total", "HTTP requests answered, by route and status", ["route", "status"])
_LATENCY = Histogram(
    "dmha_gateway_request_seconds",
    "Time to the response headers (for streams: to the first token), by route",
    ["route"],
    buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_TTFT = Histogram(
    "dmha_gateway_time_to_first_token_seconds",
    "Streamed chat completions: request to first token, through the gateway",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
)


def observe_request(route: str, status: int, seconds: float) -> None:
    """Count one answered request.

    Args:
        route: the route's path template (``/v1/models/{model}``), never the raw path.
        status: HTTP status sent.
        seconds: time until the response started.
    """
    _REQUESTS.labels(route=route, status=str(status)).inc()
    _LATENCY.labels(route=route).observe(seconds)


def observe_first_token(seconds: float) -> None:
    """Record a streamed completion's time to first token."""
    _TTFT.observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` in the Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
