"""Background work gives the interpreter lock to decoding, and only to decoding."""

from __future__ import annotations

import threading
import time

import pytest

from dmha import process_resources
from dmha.process_resources import foreground, share_interpreter


def test_share_interpreter_pauses_only_while_foreground_work_runs(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(process_resources.time, "sleep", pauses.append)
    share_interpreter()
    assert pauses == []  # no one waits: background work keeps its pace
    with foreground():
        share_interpreter()
    assert len(pauses) == 1 and 0 < pauses[0] < 1e-3
    share_interpreter()
    assert len(pauses) == 1


def test_foreground_is_counted_per_holder_and_released_on_error():
    with foreground(), foreground():
        assert process_resources._foreground == 2
    with pytest.raises(RuntimeError), foreground():
        raise RuntimeError("a failed decode step")
    assert process_resources._foreground == 0


def test_a_pause_lets_a_waiting_thread_take_the_interpreter_lock():
    """A pure-Python loop that shares the lock lets another thread run many times per
    switch interval; the waiter's turns are counted, not timed."""
    turns = 0
    done = threading.Event()

    def waiter() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            time.sleep(0)  # needs the lock back after every call, as a torch op does

    def busy(share: bool) -> int:
        nonlocal turns
        turns = 0
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            for _ in range(200):
                pass
            if share:
                share_interpreter()
        return turns

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        with foreground():
            shared = busy(True)
        alone = busy(False)
    finally:
        done.set()
        t.join()
    assert shared > alone
