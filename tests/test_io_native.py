"""The io lane on asyncio's own primitives (issue 14): a batch without controls runs
under a `TaskScope` (the host task's cancel/uncancel) instead of an anyio cancel
scope, and a list input takes the list path (`_IoBatch._take_list`). These tests pin
what must not change: caller cancellation from an anyio scope or ``asyncio.timeout``,
fail-fast, per-task timeouts, nothing left running, and that such a batch does not
load anyio at all. On trio the same tests check the anyio path still behaves alike."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, run_all

pytestmark = pytest.mark.anyio

Backend = tuple[str, dict[str, object]]


def _asyncio_only(anyio_backend: Backend) -> None:
    if anyio_backend[0] != "asyncio":
        pytest.skip("asyncio's own cancellation (asyncio.timeout, Task.cancelling)")


def _live_tasks() -> int:
    return len(asyncio.all_tasks())


def test_a_run_all_on_asyncio_imports_nothing_of_anyio() -> None:
    # A subprocess: this test process has anyio loaded already.
    code = textwrap.dedent(
        """
        import asyncio, sys
        import tasklanes

        async def job(i):
            await asyncio.sleep(0)
            return i

        async def main():
            assert await tasklanes.run_all([job(i) for i in range(50)], limit=8) == list(range(50))
            gen = (job(i) for i in range(50))  # a lazy input: the pull path
            assert await tasklanes.run_all(gen, limit=8) == list(range(50))

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m == "anyio" or m.startswith("anyio.")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


async def test_an_anyio_cancel_scope_around_run_all_cancels_it(anyio_backend: Backend) -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def task(i: int) -> int:
        started.append(i)
        try:
            await anyio.sleep(5)
        except BaseException:
            cancelled.append(i)
            raise
        return i

    tasks = [task(i) for i in range(50)]
    with anyio.move_on_after(0.1) as scope:
        await run_all(tasks, limit=10)
    assert scope.cancelled_caught
    assert len(started) == 10 and sorted(cancelled) == sorted(started)
    # The tasks that never started were closed, not left to warn.
    assert all(inspect.getcoroutinestate(t) == inspect.CORO_CLOSED for t in tasks)
    if anyio_backend[0] == "asyncio":
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0
    await anyio.sleep(0)  # the caller goes on: nothing is left cancelling it


async def test_an_anyio_scope_cancelled_while_a_task_fails_cancels_the_caller(
    anyio_backend: Backend,
) -> None:
    # Fail-fast and the caller's own cancellation at once: the caller's scope wins
    # (the batch's failure is not raised through a cancelled scope).
    async def fails() -> None:
        await anyio.sleep(0.05)
        scope.cancel()
        raise ValueError("boom")

    with anyio.CancelScope() as scope:
        await run_all([fails(), anyio.sleep(5)])
        pytest.fail("the cancelled scope must not let run_all return")  # pragma: no cover
    assert scope.cancel_called


async def test_asyncio_timeout_around_run_all(anyio_backend: Backend) -> None:
    _asyncio_only(anyio_backend)
    before = _live_tasks()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await run_all([asyncio.sleep(5) for _ in range(20)], limit=5)
    assert _live_tasks() == before
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_cancelling_the_calling_task_cancels_the_batch(anyio_backend: Backend) -> None:
    _asyncio_only(anyio_backend)
    cancelled: list[int] = []

    async def task(i: int) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    before = _live_tasks()
    caller = asyncio.ensure_future(run_all([task(i) for i in range(30)], limit=7))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(cancelled) == list(range(7))
    assert _live_tasks() == before


async def test_an_error_cancels_the_rest_and_is_raised_as_itself(anyio_backend: Backend) -> None:
    cancelled: list[int] = []

    async def task(i: int) -> int:
        if i == 3:
            await anyio.sleep(0.02)
            raise KeyError(i)
        try:
            await anyio.sleep(5)
        except BaseException:
            cancelled.append(i)
            raise
        return i

    tasks = [task(i) for i in range(40)]
    before = _live_tasks() if anyio_backend[0] == "asyncio" else 0
    with pytest.raises(KeyError) as info:
        await run_all(tasks, limit=8)
    assert "task 3" in "".join(getattr(info.value, "__notes__", []))
    assert sorted(cancelled) == [i for i in range(8) if i != 3]
    assert all(inspect.getcoroutinestate(t) == inspect.CORO_CLOSED for t in tasks)
    if anyio_backend[0] == "asyncio":
        assert _live_tasks() == before
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0


async def test_a_failing_task_that_never_suspends_stops_the_tasks_after_it(
    anyio_backend: Backend,
) -> None:
    # No task suspends: one worker runs them in turn, and the failure must stop it
    # from starting the next ones (the list path ends its iterator).
    ran: list[int] = []

    async def task(i: int) -> int:
        ran.append(i)
        if i == 100:
            raise ValueError(i)
        return i

    tasks: list[Coroutine[Any, Any, int]] = [task(i) for i in range(1000)]
    with pytest.raises(ValueError):
        await run_all(tasks, limit=50)
    assert ran == list(range(101))
    assert all(inspect.getcoroutinestate(t) == inspect.CORO_CLOSED for t in tasks)


async def test_return_exceptions_on_the_list_path_runs_everything(anyio_backend: Backend) -> None:
    async def task(i: int) -> int:
        if i % 97 == 0:
            raise ValueError(i)
        if i % 2:
            await anyio.sleep(0)
        return i

    with Scheduler() as sched:
        results = await run_all(
            [task(i) for i in range(2000)], limit=30, return_exceptions=True, scheduler=sched
        )
        snap = sched.stats()["io"]
    for i, r in enumerate(results):
        if i % 97 == 0:
            assert isinstance(r, ValueError)
        else:
            assert r == i
    failed = len(range(0, 2000, 97))
    assert (snap.completed, snap.failed, snap.cancelled) == (2000 - failed, failed, 0)
    assert snap.run.count == 2000


async def test_a_list_of_mixed_tasks_takes_the_list_path(anyio_backend: Backend) -> None:
    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    tasks: list[Any] = [double(1), lambda: double(2), double(3)]
    assert await run_all(tasks) == [2, 4, 6]


async def test_a_per_task_timeout_on_a_native_caller(anyio_backend: Backend) -> None:
    async def task(i: int) -> int:
        await anyio.sleep(5 if i == 2 else 0)
        return i

    results = await run_all([task(i) for i in range(6)], timeout=0.1, return_exceptions=True)
    assert isinstance(results[2], TaskTimeout) and results[2].index == 2
    assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4, 5]


async def test_tasks_with_their_own_anyio_scopes_under_fail_fast(anyio_backend: Backend) -> None:
    # The tasks' own cancel scopes keep their meaning: a scope that times out inside
    # a task is that task's business, and the batch's cancellation still reaches
    # tasks waiting inside theirs.
    cancelled: list[int] = []

    async def task(i: int) -> str:
        if i == 0:
            with anyio.move_on_after(0.01):
                await anyio.sleep(5)
            return "moved on"
        if i == 1:
            await anyio.sleep(0.1)
            raise LookupError(i)
        try:
            with anyio.move_on_after(10):
                await anyio.sleep(5)
        except BaseException:
            cancelled.append(i)
            raise
        return "slept"

    with pytest.raises(LookupError):
        await run_all([task(i) for i in range(6)])
    assert sorted(cancelled) == [2, 3, 4, 5]
    assert await run_all([task(0), task(0)]) == ["moved on", "moved on"]
