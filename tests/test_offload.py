"""@offload (tasklanes/_offload.py)."""

from __future__ import annotations

import threading
import time

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


async def test_a_cpu_offload_defined_inside_a_function_travels_by_value() -> None:
    # No name a worker could import it by: the original goes by value (cloudpickle).
    factor = 3

    @offload(kind="cpu")
    def scale(x: int) -> int:
        return x * factor

    assert await scale(2) == 6
    assert await scale.map(range(4)) == [0, 3, 6, 9]
