"""The cpu lane on a foreign executor (tasklanes/_lanes/_executor.py): errors keep
their type; only a task that really does not pickle becomes a TypeError."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from tasklanes import Scheduler, call

from . import _tasks as T

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["threads", "processes"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    pool: Executor = ThreadPoolExecutor(2) if request.param == "threads" else ProcessPoolExecutor(2)
    with pool:
        yield pool


@pytest.mark.parametrize("exc_type", [ValueError, TypeError, AttributeError])
async def test_a_user_error_that_mentions_pickle_keeps_its_type(
    executor: Executor, exc_type: type[Exception]
) -> None:
    message = "the pickle jar is empty: cannot pickle lunch"
    with Scheduler(cpu_executor=executor) as sched:
        results = await sched.run_all(
            [call(T.fail_with, exc_type, message), call(T.double, 2)],
            kind="cpu",
            return_exceptions=True,
        )
    assert type(results[0]) is exc_type
    assert str(results[0]) == message
    assert results[1] == 4


async def test_a_task_that_does_not_pickle_is_a_type_error_naming_its_index() -> None:
    with ProcessPoolExecutor(1) as pool, Scheduler(cpu_executor=pool) as sched:
        results = await sched.run_all(
            [call(T.double, 1), call(T.double, threading.Lock())],
            kind="cpu",
            return_exceptions=True,
        )
    assert results[0] == 2
    assert isinstance(results[1], TypeError)
    assert "task 1" in str(results[1]) and "pickled" in str(results[1])
    assert results[1].__cause__ is not None  # the pickler's own error, kept as the cause


async def test_a_closed_executor_lane_refuses_new_batches() -> None:
    with ThreadPoolExecutor(1) as pool:
        sched = Scheduler(cpu_executor=pool)
        iterator = sched.amap(T.double, range(3), kind="cpu")
        sched.close()
        with pytest.raises(RuntimeError, match="closed"):
            async with iterator:
                async for _ in iterator:
                    pass
        assert pool.submit(T.double, 5).result() == 10  # the caller's executor lives on
