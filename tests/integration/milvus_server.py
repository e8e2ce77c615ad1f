"""A Milvus Lite server process shared by several DMHA processes (tests only).

``milvus-lite server`` (the command the pinned ``milvus-lite`` wheel installs) serves
one data directory over the Milvus gRPC protocol, so every process given
``http://127.0.0.1:<port>`` reads and writes the same collections. It is started with
``--max-workers 1``: its engine allocates sequence numbers and appends to its WAL
without a lock (single writer per collection), so requests are served one at a time.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MilvusLiteServer", "milvus_lite_command", "start_milvus_lite"]


def milvus_lite_command() -> list[str]:
    """The ``milvus-lite`` console script next to this interpreter, or the module form."""
    script = Path(sys.executable).with_name("milvus-lite")
    if script.exists():
        return [str(script)]
    found = shutil.which("milvus-lite")
    return [found] if found else [sys.executable, "-m", "milvus_lite.cmdline"]


def _free_port() -> int:
    # The server prints the port it was asked for, not the one bound, so pick one here.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class MilvusLiteServer:
    """A running ``milvus-lite server`` and the URI that reaches it."""

    popen: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def start_milvus_lite(root: Path, timeout: float = 60) -> MilvusLiteServer:
    """Start ``milvus-lite server`` on a free loopback port with its data under ``root``.

    Raises:
        AssertionError: the server exited or did not accept connections in time.
    """
    data_dir = root / "milvus"
    port = _free_port()
    log = (root / "milvus.log").open("wb")
    cmd = [*milvus_lite_command(), "server", "--data-dir", str(data_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--max-workers", "1"]
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise AssertionError(f"milvus-lite server exited:\n{(root / 'milvus.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return MilvusLiteServer(popen, port, data_dir)
        except OSError:
            if time.monotonic() > deadline:
                popen.kill()
                raise AssertionError("milvus-lite server did not listen in time") from None
            time.sleep(0.1)
