"""Background follow-up work: settled per loop, never stuck on a closed loop's leftovers."""

from __future__ import annotations

import asyncio
import threading

from dmha.executor import _background, run_in_background, settle_background


def test_settle_waits_for_this_loops_work_and_drops_a_closed_loops_leftovers():
    release = threading.Event()
    done: list[str] = []

    async def leave_one_behind() -> None:
        run_in_background(release.wait, 30)  # still running when its loop closes

    # A loop closed with the work still pending (as a test runner's loop may be).
    old = asyncio.new_event_loop()
    old.run_until_complete(leave_one_behind())
    old.close()
    assert any(t.get_loop() is old for t in _background)  # the closed loop's task stays registered

    async def settle_own_work() -> None:
        run_in_background(done.append, "archived")
        await settle_background()

    try:
        asyncio.run(asyncio.wait_for(settle_own_work(), 10))
    finally:
        release.set()
    assert done == ["archived"]
    assert not _background
