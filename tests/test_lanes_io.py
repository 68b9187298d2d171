"""The io lane (tasklanes/_lanes/_io.py): worker pool, per-loop capacity, watchdog."""

from __future__ import annotations

import time

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, call, run_all

from ._tasks import Gauge

pytestmark = pytest.mark.anyio


async def test_io_capacity_is_shared_by_concurrent_batches_on_one_loop() -> None:
    gauge = Gauge()

    async def task() -> None:
        with gauge:
            await anyio.sleep(0.01)

    with Scheduler(io_limit=6) as sched:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lambda: run_all([task() for _ in range(20)], limit=5, scheduler=sched))
        snap = sched.stats()["io"]
    assert gauge.peak == 6
    assert snap.completed == 60
    assert snap.wait.count > 0, "batches that waited for capacity report queue lag"


async def test_timeout_applies_to_each_task_not_to_the_batch() -> None:
    # 20 tasks of 0.05 s, 2 at a time: the batch takes ~0.5 s, each task far less
    # than its 0.2 s timeout, so none may time out.
    results = await run_all(
        [call(anyio.sleep, 0.05) for _ in range(20)], limit=2, timeout=0.2
    )
    assert results == [None] * 20


async def test_task_that_swallows_cancellation_still_times_out() -> None:
    async def stubborn() -> str:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            return "swallowed"  # bad manners: tasklanes still reports the timeout
        return "slept"

    start = time.monotonic()
    results = await run_all([stubborn(), call(anyio.sleep, 0)], timeout=0.1, return_exceptions=True)
    assert isinstance(results[0], TaskTimeout)
    assert results[1] is None
    assert time.monotonic() - start < 2


async def test_a_timed_out_worker_is_replaced_and_the_batch_goes_on() -> None:
    async def task(i: int) -> int:
        await anyio.sleep(1.0 if i % 5 == 0 else 0.001)
        return i

    results = await run_all([task(i) for i in range(30)], limit=3, timeout=0.1,
                            return_exceptions=True)
    for i, r in enumerate(results):
        if i % 5 == 0:
            assert isinstance(r, TaskTimeout) and r.index == i
        else:
            assert r == i


async def test_sync_callable_detected_at_run_time_names_the_lanes() -> None:
    # A lambda may return an awaitable, so it can only be checked when it runs.
    with pytest.raises(TypeError, match="kind='blocking'"):
        await run_all([lambda: 42])


async def test_stats_count_what_happened() -> None:
    async def boom() -> None:
        raise ValueError

    with Scheduler() as sched:
        await run_all([call(anyio.sleep, 0) for _ in range(7)] + [boom(), call(anyio.sleep, 5)],
                      timeout=0.1, return_exceptions=True, scheduler=sched)
        snap = sched.stats()["io"]
    assert (snap.completed, snap.failed, snap.timed_out, snap.cancelled) == (7, 1, 1, 0)
    assert snap.run.count == 8  # the timed-out one ran until cancelled
    assert snap.running == 0 and snap.waiting == 0
