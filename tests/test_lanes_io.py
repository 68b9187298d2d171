"""The io lane (tasklanes/_lanes/_io.py): worker pool, per-loop capacity, watchdog."""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Coroutine, Iterator
from typing import Any

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


# -- lazy input, results filled in place, run times timed in blocks (issue 14) ------------


async def test_generator_that_raises_midway_fails_the_batch_and_leaves_nothing_open() -> None:
    ran: list[int] = []
    made: list[Coroutine[Any, Any, int]] = []

    async def task(i: int) -> int:
        ran.append(i)
        return i

    def tasks() -> Iterator[object]:
        for i in range(300):
            made.append(task(i))
            yield made[-1]
        raise LookupError("the input broke")

    with pytest.raises(LookupError, match="the input broke"):
        await run_all(tasks(), limit=1000, return_exceptions=True)
    # The tasks before the break ran once each, or were closed unstarted when the
    # failure stopped the batch: none twice, none left pending.
    assert len(ran) == len(set(ran)) and set(ran) <= set(range(300))
    assert len(made) == 300
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in made)


@pytest.mark.parametrize("suspends", [False, True], ids=["trivial", "sleep0"])
async def test_an_endless_generator_is_pulled_only_a_bounded_way_ahead(suspends: bool) -> None:
    limit = 1000
    chunk = 256  # the most a lazy input is pulled at once (`_PULL_CHUNK`)
    pulled = finished = lead = 0

    async def task(i: int) -> int:
        nonlocal finished
        if suspends:
            await anyio.sleep(0)
        if i == 20_000:
            raise OverflowError("enough")
        finished += 1
        return i

    def endless() -> Iterator[object]:
        nonlocal pulled, lead
        for i in itertools.count():
            lead = max(lead, pulled - finished)
            pulled += 1
            yield task(i)

    with pytest.raises(OverflowError, match="enough"):
        await run_all(endless(), limit=limit)
    assert lead <= limit + chunk, lead  # never the whole input: the running tasks + a chunk
    # (the failure cancels the tasks still running: those pulled with the failing one)
    assert finished >= 20_000 - limit - chunk, finished
    assert pulled <= 20_001 + limit + chunk, pulled


async def test_results_stats_and_errors_of_a_large_lazy_batch() -> None:
    async def task(i: int) -> int:
        if i % 1000 == 7:
            raise ValueError(i)
        return i * 2

    n = 10_000
    with Scheduler() as sched:
        results = await run_all((task(i) for i in range(n)), limit=100,
                                return_exceptions=True, scheduler=sched)
        snap = sched.stats()["io"]
    for i, r in enumerate(results):
        if i % 1000 == 7:
            assert isinstance(r, ValueError) and r.args == (i,)
        else:
            assert r == i * 2
    assert (snap.completed, snap.failed, snap.cancelled) == (n - 10, 10, 0)
    assert snap.run.count == n
    assert 0 < snap.run.mean <= snap.run.max
    assert snap.run.p50 <= snap.run.p90 <= snap.run.p99 <= snap.run.max


async def test_a_stall_among_quick_tasks_shows_in_the_max() -> None:
    # Quick tasks are timed in blocks (one clock read for up to 64 of them); a block
    # that turns slow is counted as quick tasks plus one slow one, so a 50 ms stall
    # is reported as about 50 ms, not as a block's mean.
    async def quick(i: int) -> int:
        return i

    async def stall() -> str:
        await anyio.sleep(0.05)
        return "late"

    with Scheduler() as sched:
        tasks = [quick(i) for i in range(3000)] + [stall()] + [quick(i) for i in range(100)]
        results = await run_all(tasks, limit=1, scheduler=sched)
        snap = sched.stats()["io"]
    assert results[3000] == "late" and results[:3000] == list(range(3000))
    assert snap.run.count == 3101
    assert snap.run.max >= 0.04, snap.run.max
    assert snap.run.p50 < 0.01, "the median is a quick task"
    assert 0.04 <= snap.run.mean * 3101 <= 5.0, "the total run time is the batch's"


async def test_generator_input_with_timeouts_keeps_order_and_reports_each() -> None:
    async def task(i: int) -> int:
        await anyio.sleep(5 if i % 50 == 3 else 0)
        return i

    results = await run_all((task(i) for i in range(500)), limit=100, timeout=0.2,
                            return_exceptions=True)
    assert len(results) == 500
    for i, r in enumerate(results):
        if i % 50 == 3:
            assert isinstance(r, TaskTimeout) and r.index == i
        else:
            assert r == i
