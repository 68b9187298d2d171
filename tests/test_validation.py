"""Bad input fails before any task starts (tasklanes/_tasks.py, _call.py)."""

from __future__ import annotations

import functools
import pickle
from typing import Any

import anyio
import pytest

from tasklanes import Call, amap, call, run_all

from . import _tasks as T

pytestmark = pytest.mark.anyio

ran: list[int] = []


def record(i: int) -> int:
    ran.append(i)
    return i


async def coro_record(i: int) -> int:
    ran.append(i)
    return i


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "gpu"}, ValueError, "'io'.*'blocking'.*'cpu'"),
        ({"kind": "blocking", "limit": 0}, ValueError, "limit must be >= 1"),
        ({"kind": "blocking", "limit": -1}, ValueError, "limit must be >= 1"),
        ({"kind": "blocking", "limit": 2.5}, TypeError, "limit must be an int"),
        ({"kind": "blocking", "limit": True}, TypeError, "limit must be an int"),
        ({"kind": "blocking", "timeout": 0}, ValueError, "timeout must be > 0"),
        ({"kind": "blocking", "timeout": -1}, ValueError, "timeout must be > 0"),
        ({"kind": "blocking", "timeout": float("nan")}, ValueError, "timeout must be > 0"),
        ({"kind": "blocking", "timeout": "1"}, TypeError, "timeout must be a number"),
        ({"kind": "blocking", "progress": "yes"}, TypeError, "progress must be"),
    ],
)
async def test_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        await run_all([call(record, 1)], **kwargs)
    assert ran == []


async def test_sync_callable_on_io_suggests_the_other_lanes() -> None:
    with pytest.raises(TypeError, match="kind='blocking'.*kind='cpu'") as info:
        await run_all([coro_record(0), call(record, 1)])
    assert "task 1" in str(info.value)
    assert ran == []  # the valid coroutine before it never ran (and was closed)


@pytest.mark.parametrize("kind", ["blocking", "cpu"])
async def test_coroutine_on_a_sync_lane_suggests_io(kind: str) -> None:
    with pytest.raises(TypeError, match="kind='io'"):
        await run_all([call(record, 0), coro_record(1)], kind=kind)
    assert ran == []


@pytest.mark.parametrize("kind", ["blocking", "cpu"])
async def test_async_function_on_a_sync_lane_suggests_io(kind: str) -> None:
    with pytest.raises(TypeError, match="kind='io'"):
        await run_all([call(coro_record, 1)], kind=kind)


@pytest.mark.parametrize("kind", ["blocking", "cpu"])
async def test_an_offload_function_on_a_sync_lane_is_refused_up_front(kind: str) -> None:
    # Its call makes a coroutine: a worker would hand back (or fail to pickle) that
    # instead of running the function. The hint names the plain function.
    tasks: list[Any] = [call(T.offloaded_square, 2), functools.partial(T.offloaded_square, 3)]
    for task in tasks:
        with pytest.raises(TypeError, match=r"offloaded_square.__wrapped__"):
            await run_all([task], kind=kind)
    with pytest.raises(TypeError, match=r"offloaded_square.__wrapped__"):
        [r async for r in amap(T.offloaded_square, [1, 2], kind=kind)]
    # The plain function behind it runs there, and the wrapper itself on any lane.
    assert await run_all([call(T.offloaded_square.__wrapped__, 4)], kind=kind) == [16]
    assert await run_all([call(T.offloaded_square, 5)], kind="io") == [25]


async def test_closure_on_cpu_runs_by_value() -> None:
    # With the interactive extra (cloudpickle); without it: test_reliability_bad_input.
    def local() -> int:
        return 1

    assert await run_all([call(T.double, 1), local], kind="cpu") == [2, 1]


class _LockHolder:
    """Its bound methods do not pickle, by reference or by value (a lock)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()

    def run(self, x: int) -> int:
        return x


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("wrap", [call, functools.partial])
async def test_a_bad_function_among_many_calls_is_named_by_its_first_task(
    lazy: bool, wrap: Any
) -> None:
    # Calls are checked in bulk (once per distinct function): the error still names
    # the first task of the first function that fails, and nothing runs.
    bad, other = _LockHolder().run, _LockHolder().run
    tasks = [wrap(T.double, i) for i in range(100)]
    tasks[40] = wrap(bad, 40)
    tasks[41] = wrap(other, 41)
    tasks[70] = wrap(bad, 70)
    with pytest.raises(TypeError, match="task 40 "):
        await run_all(iter(tasks) if lazy else tasks, kind="cpu")


class _TouchyCallable:
    """A callable whose `==` raises: the bulk check must not trip over it."""

    def __call__(self, x: int) -> int:
        return x

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("do not compare me")

    __hash__ = object.__hash__


@pytest.mark.parametrize("kind", ["blocking", "cpu"])
async def test_an_empty_batch_passes_the_bulk_check(kind: str) -> None:
    assert await run_all([], kind=kind) == []
    assert await run_all(iter([]), kind=kind) == []


async def test_bulk_check_of_callables_that_refuse_comparison() -> None:
    one, two = _TouchyCallable(), _TouchyCallable()
    tasks = [call(one if i % 2 else two, i) for i in range(50)]
    assert await run_all(tasks, kind="blocking") == list(range(50))


async def test_bulk_check_of_one_function_checks_it_once_and_still_catches_the_bad_one() -> None:
    # Many calls of one function and one odd task at the end: the odd one is checked.
    tasks: list[Any] = [call(record, i) for i in range(200)]
    tasks.append(call(coro_record, 1))  # an async function on a sync lane
    with pytest.raises(TypeError, match="task 200"):
        await run_all(tasks, kind="blocking")
    assert ran == []  # nothing started


async def test_not_a_task_at_all() -> None:
    with pytest.raises(TypeError, match="task 0"):
        await run_all([42], kind="blocking")
    with pytest.raises(TypeError, match="task 0"):
        await run_all([42])
    with pytest.raises(TypeError, match="iterable"):
        await run_all(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="iterable"):
        await run_all("abc", kind="blocking")  # type: ignore[call-overload]


async def test_lazy_input_is_checked_as_pulled_and_fails_the_batch() -> None:
    def tasks() -> Any:
        yield call(record, 0)
        yield "not a task"
        yield call(record, 2)

    with pytest.raises(TypeError, match="task 1"):
        await run_all(tasks(), kind="blocking", limit=1)
    assert 2 not in ran


async def test_errors_raised_by_the_input_iterator_surface_as_themselves() -> None:
    def tasks() -> Any:
        yield call(record, 0)
        raise LookupError("input broke")

    with pytest.raises(LookupError, match="input broke"):
        await run_all(tasks(), kind="blocking")


def test_call_binds_and_pickles() -> None:
    task = call(T.sleep_return, 0, value="v")
    assert task() == "v"
    assert isinstance(task, Call)
    copy = pickle.loads(pickle.dumps(task))
    assert copy() == "v"
    assert "sleep_return" in repr(task)
    with pytest.raises(TypeError, match="callable"):
        call(3)  # type: ignore[arg-type]


async def test_partial_is_accepted_everywhere() -> None:
    assert await run_all([functools.partial(T.double, 3)], kind="cpu") == [6]
    assert await run_all([functools.partial(T.double, 3)], kind="blocking") == [6]
    assert await run_all([functools.partial(coro_record, 3)]) == [3]


async def test_io_capacity_error_is_not_triggered_by_large_batches() -> None:
    assert len(await run_all([anyio.sleep(0) for _ in range(2500)])) == 2500
