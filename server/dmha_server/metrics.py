"""Prometheus metrics of the gRPC edge (scraped from ``server.metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["observe_code", "observe_component", "observe_generation", "observe_latency", "start_metrics_server"]

_REQUESTS = Counter("dmha_requests_total", "RPCs served, by method and status code", ["method", "code"])
_LATENCY = Histogram(
    "dmha_request_seconds",
    "Wall time of successful RPCs (whole stream for streaming calls)",
    ["method"],
    buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
_TTFT = Histogram(
    "dmha_time_to_first_token_seconds",
    "Time from request to first streamed delta",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
)
_TOKENS = Counter("dmha_generated_tokens_total", "Tokens generated")
_UP = Gauge("dmha_component_up", "1 while the part passes its health probe, else 0", ["component"])


def observe_code(method: str, code: str) -> None:
    """Count one finished RPC."""
    _REQUESTS.labels(method=method, code=code).inc()


def observe_component(name: str, ok: bool) -> None:
    """Record one part's latest health probe."""
    _UP.labels(component=name).set(1 if ok else 0)


def observe_latency(method: str, seconds: float) -> None:
    """Record the duration of a successful RPC."""
    _LATENCY.labels(method=method).observe(seconds)


def observe_generation(ttft_seconds: float | None, tokens: int) -> None:
    """Record time-to-first-token and tokens of one reply."""
    if ttft_seconds is not None:
        _TTFT.observe(ttft_seconds)
    _TOKENS.inc(tokens)


def start_metrics_server(host: str, port: int) -> int:
    """Serve ``/metrics`` over HTTP.

    Args:
        host: bind address.
        port: TCP port (0 = any free port).

    Returns:
        The port bound.
    """
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
