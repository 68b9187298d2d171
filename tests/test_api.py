"""The public batch API: run_all, as_completed, amap, run_all_sync (tests/_api.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import tasklanes
from tasklanes import (
    Scheduler,
    TaskTimeout,
    amap,
    as_completed,
    call,
    run_all,
    run_all_sync,
)

from ._tasks import CustomError, Gauge, double, raise_custom, sleep_return

pytestmark = pytest.mark.anyio


async def echo(value: object, delay: float = 0.0) -> object:
    await anyio.sleep(delay)
    return value


async def fail_after_delay(delay: float, exc: BaseException) -> None:
    await anyio.sleep(delay)
    raise exc


async def sleep_long(i: int, cancelled: list[int]) -> None:
    """Sleeps 10 s unless cancelled; a cancellation is recorded in ``cancelled``."""
    try:
        await anyio.sleep(10)
    except anyio.get_cancelled_exc_class():
        cancelled.append(i)
        raise


# -- run_all: order, input forms --------------------------------------------------------


async def test_results_come_back_in_input_order_whatever_the_finishing_order() -> None:
    delays = [0.05, 0.0, 0.03, 0.01, 0.04]
    results = await run_all([echo(i, d) for i, d in enumerate(delays)])
    assert results == [0, 1, 2, 3, 4]


async def test_blocking_results_in_input_order() -> None:
    tasks = [call(sleep_return, d, i) for i, d in enumerate([0.05, 0.0, 0.03, 0.01])]
    assert await run_all(tasks, kind="blocking") == [0, 1, 2, 3]


async def test_accepts_awaitables_and_callables_returning_them() -> None:
    loop_future_value = 7

    class Awaitable:
        def __await__(self):  # type: ignore[no-untyped-def]
            return echo(loop_future_value).__await__()

    tasks: list[object] = [echo(1), call(echo, 2), lambda: echo(3), Awaitable()]
    assert await run_all(tasks) == [1, 2, 3, 7]


async def test_lazy_input_is_pulled_only_as_workers_free_up() -> None:
    pulled = 0

    def tasks() -> Iterator[object]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield echo(i, 0.01)

    gauge_max = 0

    async def watch() -> None:
        nonlocal gauge_max
        while True:
            gauge_max = max(gauge_max, pulled)
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        first = await run_all(tasks(), limit=5)
        tg.cancel_scope.cancel()
    assert first == list(range(100))
    assert pulled == 100


async def test_lazy_input_never_runs_far_ahead_of_the_limit() -> None:
    pulled = 0
    finished = 0
    gap = 0

    async def task(i: int) -> int:
        nonlocal finished, gap
        gap = max(gap, pulled - finished)
        await anyio.sleep(0.001)
        finished += 1
        return i

    def tasks() -> Iterator[object]:
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield task(i)

    await run_all(tasks(), limit=4)
    assert gap <= 4 + 1, gap  # the running tasks, and the one being started


async def test_async_iterable_input() -> None:
    async def tasks() -> AsyncIterator[object]:
        for i in range(20):
            await anyio.sleep(0)
            yield echo(i)

    assert await run_all(tasks(), limit=3) == list(range(20))


async def test_async_iterable_input_on_blocking_lane() -> None:
    async def tasks() -> AsyncIterator[object]:
        for i in range(10):
            yield call(double, i)

    assert await run_all(tasks(), kind="blocking", limit=3) == [2 * i for i in range(10)]


async def test_empty_input() -> None:
    assert await run_all([]) == []
    assert await run_all(iter([]), kind="blocking") == []


# -- limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 10])
async def test_io_limit_is_reached_and_never_exceeded(limit: int) -> None:
    gauge = Gauge()

    async def task() -> None:
        with gauge:
            await anyio.sleep(0.01)

    await run_all([task() for _ in range(30)], limit=limit)
    assert gauge.peak == limit
    assert gauge.started == 30


@pytest.mark.parametrize("limit", [1, 4, 8])
async def test_blocking_limit_is_reached_and_never_exceeded(limit: int) -> None:
    gauge = Gauge()

    def task() -> None:
        with gauge:
            time.sleep(0.02)

    await run_all([task for _ in range(24)], kind="blocking", limit=limit)
    assert gauge.peak == limit


# -- timeouts -------------------------------------------------------------------------


async def test_io_timeout_fails_only_the_overrunning_task() -> None:
    start = time.monotonic()
    results = await run_all(
        [echo(1), echo(2, 5.0), echo(3, 0.05)], timeout=0.2, return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], TaskTimeout)
    assert isinstance(results[1], TimeoutError)
    assert results[1].index == 1
    assert time.monotonic() - start < 2.0


async def test_timeout_without_return_exceptions_raises_task_timeout() -> None:
    with pytest.raises(TaskTimeout) as info:
        await run_all([echo(1), echo(2, 5.0)], timeout=0.1)
    assert info.value.index == 1


async def test_blocking_timeout_reports_at_once_and_check_cancelled_stops_the_thread() -> None:
    from ._tasks import polite_sleeper

    flag: list[str] = []
    start = time.monotonic()
    results = await run_all(
        [call(polite_sleeper, 10.0, flag), call(double, 4)],
        kind="blocking", timeout=0.2, return_exceptions=True,
    )
    elapsed = time.monotonic() - start
    assert isinstance(results[0], TaskTimeout)
    assert results[1] == 8
    assert flag == ["TaskTimeout"], "check_cancelled() must raise TaskTimeout in the thread"
    assert elapsed < 2.0


async def test_blocking_timeout_waits_for_the_thread_before_returning() -> None:
    finished: list[float] = []

    def stubborn() -> None:
        time.sleep(0.4)  # never checks: cannot be stopped, only waited for
        finished.append(time.monotonic())

    results = await run_all([stubborn], kind="blocking", timeout=0.05, return_exceptions=True)
    assert isinstance(results[0], TaskTimeout)
    assert finished, "run_all returned while its thread still ran"


# -- failures -------------------------------------------------------------------------


async def test_first_failure_is_raised_as_itself_with_a_note_naming_its_index() -> None:
    with pytest.raises(KeyError) as info:
        await run_all([echo(0, 0.5), fail_after_delay(0.01, KeyError("missing")), echo(2, 0.5)])
    assert not isinstance(info.value, BaseExceptionGroup)
    assert any("task 1" in note for note in info.value.__notes__)


async def test_fail_fast_cancels_the_rest_promptly() -> None:
    cancelled: list[int] = []

    start = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        await run_all(
            [sleep_long(0, cancelled), sleep_long(1, cancelled),
             fail_after_delay(0.05, ValueError("boom"))]
        )
    assert time.monotonic() - start < 2.0
    assert sorted(cancelled) == [0, 1]


async def test_fail_fast_never_starts_the_remaining_tasks() -> None:
    started = []

    async def task(i: int) -> None:
        started.append(i)
        if i == 0:
            raise ValueError("first")
        await anyio.sleep(0.01)

    with pytest.raises(ValueError, match="first"):
        await run_all([task(i) for i in range(50)], limit=1)
    assert started == [0]


async def test_blocking_failure_keeps_its_type() -> None:
    with pytest.raises(CustomError, match="bad") as info:
        await run_all([call(double, 1), call(raise_custom, "bad")], kind="blocking")
    assert any("task 1" in note for note in info.value.__notes__)


async def test_return_exceptions_runs_everything_and_keeps_each_exception() -> None:
    error = ValueError("x")
    results = await run_all(
        [echo(0), fail_after_delay(0, error), echo(2)], return_exceptions=True
    )
    assert results[0] == 0 and results[2] == 2
    assert results[1] is error


# -- cancellation by the caller ---------------------------------------------------------


async def test_caller_deadline_cancels_io_tasks_promptly() -> None:
    cancelled: list[int] = []

    start = time.monotonic()
    with anyio.move_on_after(0.1):
        await run_all([sleep_long(i, cancelled) for i in range(5)])
    assert time.monotonic() - start < 1.5
    assert sorted(cancelled) == [0, 1, 2, 3, 4]


async def test_caller_deadline_on_blocking_waits_for_threads_and_starts_nothing_new() -> None:
    from ._tasks import polite_sleeper

    flags: list[list[str]] = [[] for _ in range(6)]
    start = time.monotonic()
    with anyio.move_on_after(0.1):
        await run_all(
            [call(polite_sleeper, 10.0, f) for f in flags], kind="blocking", limit=2
        )
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    # The two that ran were asked to stop and returned before run_all did; the rest never ran.
    assert flags[:2] == [["TaskCancelled"], ["TaskCancelled"]]
    assert flags[2:] == [[], [], [], []]


async def test_unstarted_coroutines_of_a_cancelled_batch_are_closed_without_warnings() -> None:
    # filterwarnings=error turns "coroutine was never awaited" into a failure.
    with anyio.move_on_after(0.05):
        await run_all([echo(i, 1.0) for i in range(20)], limit=2)


# -- as_completed -------------------------------------------------------------------------


async def test_as_completed_yields_in_finishing_order_with_indexes() -> None:
    delays = [0.15, 0.0, 0.08]
    seen = [pair async for pair in as_completed([echo(i, d) for i, d in enumerate(delays)])]
    assert seen == [(1, 1), (2, 2), (0, 0)]


async def test_as_completed_raises_the_first_failure() -> None:
    seen = []
    with pytest.raises(ValueError, match="late"):
        async for index, value in as_completed(
            [echo(0), fail_after_delay(0.05, ValueError("late")), echo(2, 1.0)]
        ):
            seen.append(index)
    assert seen == [0]


async def test_as_completed_return_exceptions_yields_failures() -> None:
    error = ValueError("x")
    seen = dict([pair async for pair in as_completed(
        [echo(0), fail_after_delay(0, error)], return_exceptions=True)])
    assert seen == {0: 0, 1: error}


async def test_leaving_as_completed_early_stops_the_batch() -> None:
    cancelled: list[int] = []

    tasks = [echo("quick"), sleep_long(1, cancelled), sleep_long(2, cancelled)]
    async with as_completed(tasks) as results:
        async for _index, value in results:
            assert value == "quick"
            break
    # ``async with`` waited for the cleanup: the long tasks were cancelled, not left running.
    assert sorted(cancelled) == [1, 2]


async def test_break_out_of_as_completed_cancels_in_the_background() -> None:
    cancelled: list[int] = []

    async for _ in as_completed([echo(0), sleep_long(1, cancelled)]):
        break
    with anyio.fail_after(2):
        while not cancelled:
            await anyio.sleep(0.01)
    assert cancelled == [1]


async def test_cancelling_the_consumer_of_as_completed_waits_for_cleanup() -> None:
    returned: list[str] = []

    def slow_thread() -> None:
        time.sleep(0.3)
        returned.append("thread returned")

    with anyio.move_on_after(0.05):
        async for _ in as_completed([slow_thread], kind="blocking"):
            pass
    assert returned == ["thread returned"]


# -- amap -----------------------------------------------------------------------------------


async def test_amap_keeps_input_order_by_default() -> None:
    async def f(x: int) -> int:
        await anyio.sleep(0.02 if x % 2 else 0)
        return x * 10

    assert [v async for v in amap(f, range(10), limit=4)] == [x * 10 for x in range(10)]


async def test_amap_unordered_yields_as_finished() -> None:
    async def f(x: float) -> float:
        await anyio.sleep(x)
        return x

    out = [v async for v in amap(f, [0.1, 0.0, 0.05], ordered=False)]
    assert out == [0.0, 0.05, 0.1]


async def test_amap_over_an_endless_generator_stays_bounded() -> None:
    pulled = 0

    def naturals() -> Iterator[int]:
        nonlocal pulled
        n = 0
        while True:
            pulled += 1
            yield n
            n += 1

    async def slow_consumer_item(x: int) -> int:
        return x

    got = []
    async with amap(slow_consumer_item, naturals(), limit=5) as results:
        async for value in results:
            got.append(value)
            await anyio.sleep(0.001)  # a consumer slower than the tasks
            if len(got) == 200:
                break
    assert got == list(range(200))
    assert pulled < 200 + 40, pulled  # the window, not the whole (endless) input


async def test_amap_blocking_and_async_iterable_items() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(8):
            yield i

    assert [v async for v in amap(double, items(), kind="blocking", limit=2)] == [
        2 * i for i in range(8)
    ]


async def test_amap_rejects_a_sync_function_on_io_before_starting() -> None:
    with pytest.raises(TypeError, match="blocking"):
        amap(double, [1, 2])


# -- run_all_sync ---------------------------------------------------------------------------


def test_run_all_sync_from_plain_code() -> None:
    assert run_all_sync([call(double, i) for i in range(5)], kind="blocking") == [0, 2, 4, 6, 8]
    assert run_all_sync([echo(i) for i in range(3)]) == [0, 1, 2]


async def test_run_all_sync_inside_a_loop_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="await run_all"):
        run_all_sync([call(double, 1)], kind="blocking")


# -- one scheduler, several loops in several threads ---------------------------------------


def test_several_loops_in_threads_share_one_scheduler() -> None:
    import threading

    gauge = Gauge()

    def task(x: int) -> int:
        with gauge:
            time.sleep(0.01)
        return x

    errors: list[BaseException] = []
    outputs: dict[int, list[int]] = {}
    with Scheduler(blocking_limit=3) as sched:

        async def one_loop(k: int) -> None:
            outputs[k] = await run_all(
                [call(task, i) for i in range(20)], kind="blocking", scheduler=sched
            )
            outputs[k + 100] = await run_all(
                [echo(i) for i in range(20)], limit=5, scheduler=sched
            )

        def thread_main(k: int, backend: str) -> None:
            try:
                anyio.run(one_loop, k, backend=backend)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=thread_main, args=(k, "trio" if k % 2 else "asyncio"))
            for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = sched.stats()
    assert not errors
    for k in range(4):
        assert outputs[k] == list(range(20))
        assert outputs[k + 100] == list(range(20))
    assert gauge.peak <= 3, "the blocking capacity is shared by every loop"
    assert stats["blocking"].completed == 80
    assert stats["io"].completed == 80


async def test_module_functions_use_the_default_scheduler() -> None:
    await run_all([call(double, 1)], kind="blocking")
    assert tasklanes.get_scheduler().stats()["blocking"].completed == 1


async def test_asyncio_task_leak_free_after_fail_fast(anyio_backend: tuple[str, dict[str, object]]) -> None:
    if anyio_backend[0] != "asyncio":
        pytest.skip("asyncio's task registry: trio has no all_tasks() to compare")
    before = len(asyncio.all_tasks())
    with pytest.raises(ValueError):
        await run_all([echo(0, 1.0), fail_after_delay(0.01, ValueError())])
    assert len(asyncio.all_tasks()) == before


class _NoRepr:
    """A result that counts the times anyone formats it."""

    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        return "_NoRepr()"


def _make_no_repr() -> _NoRepr:
    return _NoRepr()


def test_run_all_sync_never_formats_its_result() -> None:
    # asyncio's runner once took `repr()` of the main task's callback, result included,
    # when it restored the SIGINT handler: seconds for a 200 MB result.
    _NoRepr.calls = 0
    [value] = tasklanes.run_all_sync([_make_no_repr], kind="blocking")
    assert isinstance(value, _NoRepr)
    assert _NoRepr.calls == 0
