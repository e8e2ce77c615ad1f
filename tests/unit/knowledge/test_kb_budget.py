"""The per-user time quota of knowledge-base work (a clock under the test's control)."""

from __future__ import annotations

import pytest

from dmha.errors import ResourceExhausted
from dmha.knowledge.budget import WorkQuota


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_user_who_spent_the_quota_waits_for_it_to_refill():
    clock = Clock()
    quota = WorkQuota(6.0, clock)  # 6 s per minute: refills 0.1 s per second
    quota.check("mallory")
    quota.spend("mallory", 5.0)
    quota.check("mallory")  # 1 s left: one more may start...
    quota.spend("mallory", 4.0)  # ...and overdraw by its own cost
    with pytest.raises(ResourceExhausted, match="max_work_seconds_per_minute") as err:
        quota.check("mallory")
    assert "retry in 31 s" in str(err.value)
    quota.check("bob")  # others have their own bucket
    clock.now += 29.0
    with pytest.raises(ResourceExhausted):
        quota.check("mallory")
    clock.now += 2.0
    quota.check("mallory")


def test_zero_means_no_quota():
    quota = WorkQuota(0.0, Clock())
    quota.spend("mallory", 1e9)
    quota.check("mallory")
