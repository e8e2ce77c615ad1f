"""grpc.health.v1 statuses from the core's health report.

The whole server (service ``""``) and each DMHA service are SERVING only while every
probed part works. Each part also has its own entry, ``dmha.health.<part>``
(``redis``, ``milvus``, ``executor``, ``generation``, ``disk``), so a client or an
operator can ask which part is down: ``dmha health --parts``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from dmha.runtime import HealthReport, Runtime
from dmha_server import metrics

__all__ = ["COMPONENT_PREFIX", "publish", "watch_health"]

log = logging.getLogger(__name__)

COMPONENT_PREFIX = "dmha.health."
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def publish(
    servicer: health.aio.HealthServicer,
    services: Sequence[str],
    report: HealthReport,
    previous: HealthReport | None = None,
) -> None:
    """Set every status from ``report`` and log what changed since ``previous``.

    Args:
        servicer: the server's health servicer.
        services: the DMHA service names (they follow the whole server's status).
        report: the latest probe round.
        previous: the round before (None: first round, log failures only).
    """
    before = {c.name: c.ok for c in previous.components} if previous else {}
    for part in report.components:
        await servicer.set(COMPONENT_PREFIX + part.name, _SERVING if part.ok else _NOT_SERVING)
        metrics.observe_component(part.name, part.ok)
        if before.get(part.name, True) and not part.ok:
            log.warning("health: %s is down (%s)", part.name, part.detail)
        elif before.get(part.name) is False and part.ok:
            log.warning("health: %s recovered", part.name)
    if previous is None or previous.ok != report.ok:
        status = _SERVING if report.ok else _NOT_SERVING
        for name in ("", *services):
            await servicer.set(name, status)
        if not report.ok:
            log.warning("health: NOT_SERVING (%s)", report.summary())
        elif previous is not None:
            log.warning("health: SERVING again")


async def watch_health(runtime: Runtime, servicer: health.aio.HealthServicer, services: Sequence[str]) -> None:
    """Probe the runtime's parts every ``health.interval_seconds`` and publish the result.

    Runs until cancelled. The probes run on a thread of their own (``to_thread``),
    never on the shared executor, whose liveness is one of the things probed.

    Args:
        runtime: the running components.
        servicer: the server's health servicer.
        services: the DMHA service names.
    """
    previous: HealthReport | None = None
    interval = runtime.cfg.health.interval_seconds
    while True:
        report = await asyncio.to_thread(runtime.health.check)
        await publish(servicer, services, report, previous)
        previous = report
        await asyncio.sleep(interval)
