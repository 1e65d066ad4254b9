"""The periodic-job helper's contract, driven by a manual pause: no sleeping, no timed assertion."""

from __future__ import annotations

import asyncio
import logging

import pytest

from parley_core.jobs import every, sleeping
from parley_testing.jobs import ManualPause


async def test_a_tick_at_start_then_one_per_interval_after_each_tick() -> None:
    pause, ticks = ManualPause(), []

    async def tick() -> None:
        ticks.append(len(ticks))

    job = every(30.0, tick, name="count", pause=pause)
    job.start()
    await pause.paused(1)
    assert ticks == [0]
    assert pause.asked == [30.0]
    pause.elapse()
    await pause.paused(2)
    assert ticks == [0, 1]
    assert pause.asked == [30.0, 30.0]
    await job.stop()
    assert ticks == [0, 1]
    assert not job.running


async def test_a_failing_tick_is_logged_and_the_job_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pause, calls = ManualPause(), []

    async def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the database is away")

    job = every(10.0, tick, name="flaky", after_failure=60.0, pause=pause)
    with caplog.at_level(logging.WARNING, logger="parley_core.jobs"):
        job.start()
        await pause.paused(1)
    assert job.failures == 1
    assert pause.asked == [60.0], "after a failure the job pauses at least after_failure"
    failed = [r for r in caplog.records if getattr(r, "job", None) == "flaky"]
    assert failed
    assert failed[0].exc_info is not None
    assert "database is away" in str(failed[0].exc_info[1])
    pause.elapse()
    await pause.paused(2)
    assert len(calls) == 2
    assert job.failures == 1
    assert pause.asked == [60.0, 10.0]
    await job.stop()


async def test_interval_asked_after_each_tick_and_first_tick_delayed() -> None:
    pause, schedule = ManualPause(), iter([5.0, 7.0])
    ran = 0

    async def tick() -> None:
        nonlocal ran
        ran += 1

    job = every(lambda: next(schedule), tick, name="scheduled", first_after=2.0, pause=pause)
    job.start()
    await pause.paused(1)
    assert ran == 0
    assert pause.asked == [2.0]
    pause.elapse()
    await pause.paused(2)
    pause.elapse()
    await pause.paused(3)
    assert ran == 2
    assert pause.asked == [2.0, 5.0, 7.0]
    await job.stop()


async def test_wake_runs_the_next_tick_without_waiting_out_the_interval() -> None:
    pause, ran = ManualPause(), []

    async def tick() -> None:
        ran.append(1)

    job = every(3600.0, tick, name="woken", pause=pause)
    job.start()
    await pause.paused(1)
    job.wake()
    await pause.paused(2)
    assert len(ran) == 2
    await job.stop()


async def test_stop_waits_for_the_running_tick_and_starts_no_other() -> None:
    pause = ManualPause()
    inside, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def tick() -> None:
        inside.set()
        await release.wait()
        finished.append(True)

    job = every(1.0, tick, name="slow", grace=30.0, pause=pause)
    job.start()
    await asyncio.wait_for(inside.wait(), 10)
    stopping = asyncio.create_task(job.stop())
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == [True], "the running tick ended on its own, not cancelled"
    assert job.ticks == 1
    assert pause.asked == []
    assert not job.running


async def test_stop_cancels_a_tick_that_outlasts_the_grace() -> None:
    inside, cancelled = asyncio.Event(), asyncio.Event()

    async def tick() -> None:
        inside.set()
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = every(1.0, tick, name="stuck", grace=0.0, pause=ManualPause())
    job.start()
    await asyncio.wait_for(inside.wait(), 10)
    await asyncio.wait_for(job.stop(), 10)
    assert cancelled.is_set()
    assert not job.running


async def test_a_tick_may_end_its_own_job() -> None:
    pause, ended = ManualPause(), asyncio.Event()

    async def tick() -> None:
        job.stop_soon()
        ended.set()

    job = every(1.0, tick, name="once", pause=pause)
    job.start()
    await asyncio.wait_for(ended.wait(), 10)
    await job.stop()
    assert job.ticks == 1
    assert pause.asked == []


async def test_stop_before_start_and_the_real_pause_honours_wake() -> None:
    async def tick() -> None:
        raise AssertionError("never started")

    await every(1.0, tick, name="idle").stop()
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(sleeping(3600.0, wake), 10)  # returns at once: the wake is set
