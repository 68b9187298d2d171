"""@offload (tasklanes/_offload.py)."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import anyio
import pytest

from tasklanes import Offloaded, Scheduler, TaskTimeout, offload

from . import _tasks as T
from ._tasks import Gauge

pytestmark = pytest.mark.anyio


@offload
def read_thread_name(suffix: str) -> str:
    return threading.current_thread().name + suffix


async def test_bare_decorator_runs_on_the_blocking_threads() -> None:
    assert isinstance(read_thread_name, Offloaded)
    name = await read_thread_name("!")
    assert name.startswith("tasklanes-blocking") and name.endswith("!")
    assert read_thread_name.__wrapped__("?") == threading.current_thread().name + "?"
    assert read_thread_name.__name__ == "read_thread_name"


async def test_io_decorator_with_a_limit_per_loop() -> None:
    gauge = Gauge()

    @offload(kind="io", limit=2)
    async def fetch(x: int) -> int:
        with gauge:
            await anyio.sleep(0.02)
        return x

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(fetch, i)
    assert gauge.peak == 2
    assert await fetch.map(range(6)) == list(range(6))
    assert gauge.peak == 2


async def test_blocking_limit_holds_across_single_calls_and_maps() -> None:
    gauge = Gauge()

    @offload(kind="blocking", limit=3)
    def work(x: int) -> int:
        with gauge:
            time.sleep(0.02)
        return x

    results: list[object] = []

    async def single(i: int) -> None:
        results.append(await work(i))

    async def many() -> None:
        results.extend(await work.map(range(10), limit=5))

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(single, i)
        tg.start_soon(many)
    assert gauge.peak == 3
    assert sorted(results) == sorted(list(range(6)) + list(range(10)))


async def test_timeout_on_the_decorator() -> None:
    @offload(kind="io", timeout=0.05)
    async def slow() -> None:
        await anyio.sleep(5)

    with pytest.raises(TaskTimeout) as info:
        await slow()
    assert not any("of the batch" in n for n in getattr(info.value, "__notes__", []))


async def test_errors_propagate_as_themselves() -> None:
    @offload
    def bad() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await bad()


async def test_cpu_decorator_and_map_return_exceptions() -> None:
    assert await T.offloaded_square(3) == 9
    assert await T.offloaded_square.map([1, 2], return_exceptions=True) == [1, 4]


async def test_scheduler_argument_is_used() -> None:
    with Scheduler(blocking_limit=1) as sched:

        @offload(scheduler=sched)
        def f() -> int:
            return 1

        await f()
        assert sched.stats()["blocking"].completed == 1


def test_wrong_kind_for_the_function_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="kind='blocking'"):

        @offload(kind="io")
        def sync() -> None: ...

    with pytest.raises(TypeError, match="kind='io'"):

        @offload(kind="cpu")
        async def asynchronous() -> None: ...

    with pytest.raises(ValueError, match="unknown kind"):
        offload(kind="gpu")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=">= 1"):
        offload(limit=0)


@pytest.mark.parametrize("kind", ["blocking", "io"])
async def test_two_maps_beside_full_single_calls_never_deadlock(kind: str) -> None:
    """Four single calls hold all four permits; two maps then wait. Each map must get
    its work done as permits come free, not wait for a block of them (issue 10, #1)."""
    gate = threading.Event()
    running = Gauge()

    if kind == "blocking":

        @offload(kind="blocking", limit=4)
        def work(x: int) -> int:
            if x < 0:
                with running:
                    gate.wait(30)
            return x

    else:

        @offload(kind="io", limit=4)
        async def work(x: int) -> int:  # type: ignore[misc]
            if x < 0:
                with running:
                    while not gate.is_set():
                        await anyio.sleep(0.01)
            return x

    maps: list[list[int]] = []

    async def single(x: int) -> None:
        await work(x)

    async def many(start: int) -> None:
        maps.append(await work.map(range(start, start + 8)))

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for x in range(-4, 0):
                    tg.start_soon(single, x)
                while running.started < 4:
                    await anyio.sleep(0.01)
                tg.start_soon(many, 0)
                tg.start_soon(many, 100)
                await anyio.sleep(0.1)  # both maps wait for permits now
                gate.set()
    finally:
        gate.set()
    assert sorted(maps) == [list(range(8)), list(range(100, 108))]


@offload(kind="io", limit=2)
async def limited_echo(x: int) -> int:
    await anyio.sleep(0)
    return x


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_io_limit_budget_goes_with_its_event_loop(backend: str) -> None:
    """The per-loop budget of ``@offload(kind="io", limit=...)`` must not keep the
    loop alive once it is closed (issue 10, #2)."""
    loops: list[weakref.ref[object]] = []

    async def main() -> None:
        if backend == "trio":
            import trio

            loops.append(weakref.ref(trio.lowlevel.current_trio_token()))
        else:
            import asyncio

            loops.append(weakref.ref(asyncio.get_running_loop()))
        assert await limited_echo(1) == 1
        assert await limited_echo.map(range(5)) == list(range(5))

    for _ in range(3):
        anyio.run(main, backend=backend)
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


@pytest.mark.parametrize("kind", ["blocking", "io", "cpu"])
async def test_a_failed_or_cancelled_map_gives_every_permit_back(kind: str) -> None:
    """Permits taken for tasks that never ran (fail-fast, cancellation) come back."""
    if kind == "cpu":
        work: Offloaded[..., int, int] = T.offloaded_limited_sleep
    elif kind == "blocking":

        @offload(kind="blocking", limit=2)
        def work(seconds: float) -> int:
            if seconds < 0:
                raise KeyError("fail fast")
            time.sleep(seconds)
            return 1

    else:

        @offload(kind="io", limit=2)
        async def work(seconds: float) -> int:  # type: ignore[misc]
            if seconds < 0:
                raise KeyError("fail fast")
            await anyio.sleep(seconds)
            return 1

    with pytest.raises(KeyError):
        await work.map([0.01, -1, *[0.01] * 20])
    with anyio.move_on_after(0.3):
        await work.map([0.05] * 50)
    limiter = work._limiter()
    assert limiter is not None and limiter.held == 0 and limiter.waiting == 0
    assert await work.map([0.0] * 4) == [1] * 4


async def test_a_cpu_offload_defined_inside_a_function_travels_by_value() -> None:
    # No name a worker could import it by: the original goes by value (cloudpickle).
    factor = 3

    @offload(kind="cpu")
    def scale(x: int) -> int:
        return x * factor

    assert await scale(2) == 6
    assert await scale.map(range(4)) == [0, 3, 6, 9]


@pytest.mark.parametrize("kind", ["blocking", "io"])
async def test_a_retried_attempt_of_a_map_takes_the_functions_permit_again(kind: str) -> None:
    """limit= and retry=: each attempt holds one of the function's permits, so a retry
    never runs beside the task that took the permit its first attempt gave back."""
    from tasklanes import Retry

    gauge = Gauge()
    attempts: dict[int, int] = {}

    def body(x: int) -> None:
        attempts[x] = attempts.get(x, 0) + 1
        if x == 0 and attempts[x] == 1:
            raise ConnectionError("first attempt")

    if kind == "blocking":

        @offload(kind="blocking", limit=1, retry=Retry(3, backoff=0.01, jitter=False))
        def work(x: int) -> int:
            with gauge:
                body(x)
                time.sleep(0.05)
            return x

    else:

        @offload(kind="io", limit=1, retry=Retry(3, backoff=0.01, jitter=False))
        async def work(x: int) -> int:  # type: ignore[misc]
            with gauge:
                body(x)
                await anyio.sleep(0.05)
            return x

    results: dict[str, list[int]] = {}

    async def run_map(name: str, items: list[int]) -> None:
        results[name] = await work.map(items)

    # Two maps share the function's one permit (a map alone never runs more than
    # `limit` tasks at once anyway).
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_map, "a", [0, 1, 2])
        tg.start_soon(run_map, "b", [10, 11, 12])
    assert results == {"a": [0, 1, 2], "b": [10, 11, 12]}
    assert attempts[0] == 2
    assert gauge.peak == 1
    limiter = work._limiter()
    assert limiter is not None and limiter.held == 0 and limiter.waiting == 0
