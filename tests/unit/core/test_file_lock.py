"""FileLock: excludes other processes through flock, and degrades to a thread lock."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import pytest

import dmha.file_lock
from dmha.file_lock import FileLock


def test_held_lock_is_an_exclusive_flock_released_on_exit(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / ".lock")
    other = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        with lock.held(), pytest.raises(BlockingIOError):  # another open file description is refused
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again after the block
    finally:
        os.close(other)


def test_without_flock_threads_are_still_excluded_and_it_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dmha.file_lock, "fcntl", None)
    lock = FileLock(tmp_path / ".lock")
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with lock.held():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)  # a window in which an unexcluded thread would enter
                with guard:
                    inside -= 1

    with caplog.at_level(logging.WARNING, logger="dmha.file_lock"):
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most == 1
    assert len([r for r in caplog.records if "excludes only this process" in r.getMessage()]) == 1
