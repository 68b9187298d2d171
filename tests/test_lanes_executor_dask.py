"""The cpu lane on a Dask ``ClientExecutor`` (tasklanes/_lanes/_executor.py,
`_DaskBatch`), on a real LocalCluster: tasks and results go in bulk through the
client, and each task keeps its own result, error, timeout and cancellation."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, call

from . import _tasks as T
from .conftest import (
    _settle,
    child_pids,
    forkserver_pid,
    is_runtime_thread,
    open_fds,
    resource_tracker_pid,
)

pytestmark = pytest.mark.anyio


def _is_socket(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's leak check, but for the module's Dask client: its connection pool
    opens sockets to the cluster as requests overlap and keeps them until the client
    closes (with the module), so new *sockets* are the client's, not a test's.
    Threads, child processes and any other fd are checked as everywhere."""
    threads_before = set(threading.enumerate())
    children_before = child_pids()
    fds_before = open_fds()
    yield

    def leaked_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not is_runtime_thread(t)
        ]

    def leaked_children() -> set[int]:
        shared = {forkserver_pid(), resource_tracker_pid()}
        return child_pids() - children_before - shared  # type: ignore[operator]

    def leaked_fds() -> set[int]:
        return {fd for fd in open_fds() - fds_before if not _is_socket(fd)}

    _settle(lambda: leaked_threads() or leaked_children())
    assert not leaked_threads(), f"test left threads running: {leaked_threads()}"
    assert not leaked_children(), f"test left child processes: {sorted(leaked_children())}"
    _settle(lambda: len(leaked_fds()) > 2, 2.0)
    assert len(leaked_fds()) <= 2, f"test left file descriptors open: {sorted(leaked_fds())}"


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real LocalCluster (2 worker processes) shared by the module's Dask tests.

    Made before any test's leak baseline and warmed up, so that the threads and
    connections Dask opens on first use are not counted against a test.
    """
    distributed = pytest.importorskip("distributed")
    import logging

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # another cluster on this machine may hold 8787
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = client.map(T.double, range(8), pure=False)
        assert [r for _, r in distributed.as_completed(futures, with_results=True)]
        client.cancel(client.map(T.sleep_return, [0.2] * 4, range(4), pure=False))
        yield client


def our_keys(client: Any) -> list[str]:
    """The keys of this lane's futures the client still holds."""
    return [str(k) for k in client.futures if str(k).startswith("tasklanes-cpu")]


async def wait_released(client: Any) -> list[str]:
    """Our keys still held after waiting (generously) for Dask to release them.

    A future lives as long as something refers to it; an error's traceback can keep
    one in a reference cycle until the garbage collector runs: run it.
    """
    with anyio.move_on_after(20):
        while our_keys(client):
            gc.collect()
            await anyio.sleep(0.05)
    return our_keys(client)


async def wait_idle(client: Any) -> None:
    """Wait until no task runs on the cluster: a task a test timed out or cancelled
    runs on to its end there (Dask cannot stop it), and would hold a worker."""
    def executing(dask_worker: Any) -> int:  # cloudpickled by value to the workers
        return len(dask_worker.state.executing)

    with anyio.move_on_after(30):
        while any(client.run(executing).values()):
            await anyio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_dask_results_in_input_order(dask_client: Any) -> None:
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        assert sched.stats()["cpu"].capacity == 256
        assert await sched.run_all([call(T.double, i) for i in range(150)], kind="cpu") == [
            2 * i for i in range(150)
        ]
        # A window smaller than the input: the lane refills it as results come back.
        assert await sched.run_all(
            [call(T.double, i) for i in range(40)], kind="cpu", limit=3
        ) == [2 * i for i in range(40)]
        # Dask ships tasks with cloudpickle: a lambda is fine there.
        assert await sched.run_all([lambda: 5], kind="cpu") == [5]
        assert sched.stats()["cpu"].completed == 191
    assert await wait_released(dask_client) == []


@pytest.mark.timeout(120)
async def test_dask_a_failing_task_fails_only_itself(dask_client: Any) -> None:
    tasks = [call(T.double, 1), call(T.raise_custom, "remote"), call(T.double, 3)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        results = await sched.run_all(tasks, kind="cpu", return_exceptions=True)
        assert results[0] == 2 and results[2] == 6
        assert type(results[1]) is T.CustomError and str(results[1]) == "remote"
        assert "task 1" in " ".join(getattr(results[1], "__notes__", ()))
        with pytest.raises(T.CustomError, match="remote") as info:
            await sched.run_all(tasks, kind="cpu")
        assert "task 1" in " ".join(getattr(info.value, "__notes__", ()))
        stats = sched.stats()["cpu"]
        assert stats.failed >= 2 and stats.completed >= 2


@pytest.mark.timeout(120)
async def test_dask_run_all_holds_successes_but_not_failures(dask_client: Any) -> None:
    # run_all without progress fetches a map's successes in one gather at its end
    # (`Batch.streams`); a failure must still stop the batch at once, not after the
    # slow tasks beside it.
    await wait_idle(dask_client)
    tasks = [call(T.sleep_return, 6, "slow"), call(T.raise_custom, "early")]
    tasks += [call(T.double, i) for i in range(2, 20)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        start = time.monotonic()
        with pytest.raises(T.CustomError, match="early"):
            await sched.run_all(tasks, kind="cpu")
        assert time.monotonic() - start < 4.5  # the slow task takes 6 s
        await wait_idle(dask_client)
        # The same with return_exceptions: every outcome, in order, once all are in.
        quick = [call(T.double, 1), call(T.raise_custom, "x"), *tasks[2:]]
        results = await sched.run_all(quick, kind="cpu", return_exceptions=True)
        assert results[0] == 2 and type(results[1]) is T.CustomError
        assert results[2:] == [2 * i for i in range(2, 20)]
        # With progress, successes are handed over as they finish (here: before the
        # slow task's end, which is last).
        seen: list[int] = []
        await sched.run_all(
            [call(T.sleep_return, 2, "slow"), *[call(T.double, i) for i in range(5)]],
            kind="cpu",
            progress=lambda update: seen.append(update.done),
        )
        assert seen[-1] == 6 and len(set(seen)) >= 2
    assert await wait_released(dask_client) == []


@pytest.mark.timeout(120)
async def test_dask_a_task_that_does_not_pickle_fails_alone(dask_client: Any) -> None:
    tasks = [call(T.double, 1), call(T.double, threading.Lock()), call(T.double, 3)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        results = await sched.run_all(tasks, kind="cpu", return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], TypeError)
    assert "task 1" in str(results[1]) and "pickled" in str(results[1])


@pytest.mark.timeout(120)
async def test_dask_a_timed_out_task_is_cancelled_on_the_cluster(dask_client: Any) -> None:
    await wait_idle(dask_client)
    # Two tasks for two idle workers: Dask places them side by side (a third could
    # queue behind the slow one, and a timeout counts from submission).
    tasks = [call(T.sleep_return, 3, "slow"), call(T.double, 2)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        # With a timeout, at most twice the cluster's threads are in flight: a timeout
        # counts from submission, so tasks must not queue on the cluster meanwhile.
        lane = sched._lane("cpu")
        assert lane.timed_window() == 4
        results = await sched.run_all(tasks, kind="cpu", timeout=1, return_exceptions=True)
        assert isinstance(results[0], TaskTimeout) and results[0].index == 0
        assert results[1] == 4
        assert sched.stats()["cpu"].timed_out == 1
    assert await wait_released(dask_client) == []  # client.cancel released it


@pytest.mark.timeout(120)
async def test_dask_cancelling_the_caller_cancels_the_batch(dask_client: Any) -> None:
    await wait_idle(dask_client)
    tasks = [call(T.sleep_return, 2, i) for i in range(12)]  # 12 s of work on 2 workers
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        with anyio.move_on_after(0.5) as scope:
            await sched.run_all(tasks, kind="cpu")
        assert scope.cancelled_caught
        # Every future of the batch is cancelled: none stays held, and the cluster
        # drops the queued ones (only the two already running finish there).
        assert await wait_released(dask_client) == []
        assert sched.stats()["cpu"].cancelled == 12
        # The cluster is free again well before the 12 s the batch would have taken.
        assert await sched.run_all([call(T.double, 5)], kind="cpu") == [10]


@pytest.mark.timeout(120)
async def test_dask_streams_results_as_they_finish(dask_client: Any) -> None:
    await wait_idle(dask_client)
    tasks = [call(T.sleep_return, 4, "slow")] + [call(T.double, i) for i in range(1, 6)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        seen = []
        async with sched.as_completed(tasks, kind="cpu") as outcomes:
            async for index, value in outcomes:
                seen.append(index)
                assert value == ("slow" if index == 0 else 2 * index)
    # The slow task runs on one worker while the other does the rest: it comes last.
    assert sorted(seen) == list(range(6)) and seen[-1] == 0


@pytest.mark.timeout(120)
async def test_dask_lazy_input_is_pulled_in_windows(dask_client: Any) -> None:
    pulled = 0

    def tasks() -> Iterator[Any]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield call(T.double, i)

    received = 0
    most_ahead = 0
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        async with sched.as_completed(tasks(), kind="cpu", limit=5) as outcomes:
            async for _ in outcomes:
                received += 1
                most_ahead = max(most_ahead, pulled - received)
                await anyio.sleep(0.01)  # a consumer slower than the tasks
    assert received == 100
    # In flight (<= limit) plus the iterator's buffer (max(2 * limit, 16)); never the
    # whole input.
    assert most_ahead <= 5 + 16 + 1, most_ahead


@pytest.mark.timeout(120)
async def test_dask_in_flight_window_with_and_without_a_timeout(dask_client: Any) -> None:
    await wait_idle(dask_client)
    tasks = [call(T.sleep_return, 0.2, i) for i in range(12)]
    with Scheduler(cpu_executor=dask_client.get_executor()) as sched:
        most = 0

        async def sample() -> None:
            nonlocal most
            while True:
                most = max(most, sched.stats()["cpu"].running)
                await anyio.sleep(0.01)

        async def run(timeout: float | None) -> list[Any]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                results = await sched.run_all(tasks, kind="cpu", timeout=timeout)
                tg.cancel_scope.cancel()
            return results

        # Without a timeout, the whole (small) batch goes to the cluster at once.
        assert await run(None) == list(range(12))
        assert most == 12
        # With one, at most twice the cluster's two threads are in flight.
        most = 0
        assert await run(60) == list(range(12))
        assert 1 <= most <= 4
