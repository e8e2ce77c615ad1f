"""The health monitor and the fail-fast switch (no backends: the parts are functions)."""

from __future__ import annotations

import threading
import time

import pytest

from dmha.errors import Unavailable
from dmha.failfast import FailFast
from dmha.health import HealthMonitor, check_disk


def test_report_names_each_failing_part_and_why():
    def broken() -> None:
        raise Unavailable("no answer within 1 s")

    def buggy() -> None:
        raise KeyError("oops")

    monitor = HealthMonitor([("redis", broken), ("disk", lambda: None), ("milvus", buggy)], timeout=1.0)
    try:
        report = monitor.check()
    finally:
        monitor.close()
    assert not report.ok
    assert [(c.name, c.ok) for c in report.components] == [("redis", False), ("disk", True), ("milvus", False)]
    assert report.summary().startswith("redis: no answer within 1 s; milvus: probe failed: KeyError")


def test_a_hung_probe_is_down_within_the_timeout_and_never_piles_up():
    release = threading.Event()
    started = []

    def hung() -> None:
        started.append(1)
        release.wait(30)

    monitor = HealthMonitor([("milvus", hung), ("disk", lambda: None)], timeout=0.3)
    try:
        for _ in range(3):
            start = time.monotonic()
            report = monitor.check()
            assert time.monotonic() - start < 1.0
            assert [c.ok for c in report.components] == [False, True]
            assert report.components[0].detail.startswith("no answer for")
        assert len(started) == 1  # the hung probe was not started again
        release.set()
        time.sleep(0.1)
        assert monitor.check().ok
    finally:
        release.set()
        monitor.close()


def test_switch_fails_fast_then_lets_one_call_try():
    switch = FailFast(pause=0.2)
    assert switch.allow() and not switch.open
    error = ConnectionError("down")
    switch.failed(error)
    assert switch.open and switch.last_error is error
    assert not switch.allow()  # within the pause: fail at once
    time.sleep(0.25)
    assert switch.allow()  # one call may try...
    assert not switch.allow()  # ...and only one
    switch.failed()
    assert not switch.allow()
    time.sleep(0.25)
    assert switch.allow()
    switch.answered()
    assert not switch.open and switch.allow() and switch.allow()


def test_disk_probe_reports_too_little_space(tmp_path):
    check_disk(tmp_path, 0)
    assert not (tmp_path / ".health-probe").exists()
    with pytest.raises(Unavailable, match="KiB free"):
        check_disk(tmp_path, 2**62)
    with pytest.raises(Unavailable, match="cannot write"):
        check_disk(tmp_path / "missing", 0)


def test_a_part_is_down_only_after_failing_rounds_in_a_row():
    outcomes = iter([False, True, False, False, False, True])

    def flaky() -> None:
        if not next(outcomes):
            raise Unavailable("slow")

    monitor = HealthMonitor([("milvus", flaky)], timeout=1.0, failures_to_down=2)
    try:
        seen = [monitor.check().ok for _ in range(6)]
    finally:
        monitor.close()
    # fail (tolerated), ok, fail (tolerated), fail (down), fail (down), ok
    assert seen == [True, True, True, False, False, True]
