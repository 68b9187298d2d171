"""The Scheduler (tasklanes/_scheduler.py): lifecycle, capacities, stats, executors."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

import tasklanes
from tasklanes import LaneSnapshot, Scheduler, TaskTimeout, call, get_scheduler, run_all

from . import _tasks as T
from ._helpers import pid_exists, run_json_script, tasklanes_threads, wait_for

pytestmark = pytest.mark.anyio


def test_defaults() -> None:
    with Scheduler() as sched:
        assert sched.capacity("io") == 1000
        assert sched.capacity("blocking") == 40
        import os

        assert sched.capacity("cpu") == len(os.sched_getaffinity(0))


def test_nothing_starts_until_a_lane_is_used() -> None:
    before = threading.active_count()
    sched = Scheduler()
    stats = sched.stats()
    assert set(stats) == {"io", "blocking", "cpu"}
    assert all(isinstance(s, LaneSnapshot) for s in stats.values())
    assert stats["cpu"].completed == 0
    assert threading.active_count() == before
    assert not multiprocessing.active_children()
    sched.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"io_limit": 0}, ValueError, ">= 1"),
        ({"blocking_limit": -3}, ValueError, ">= 1"),
        ({"cpu_limit": 0}, ValueError, ">= 1"),
        ({"io_limit": "10"}, TypeError, "int"),
        ({"cpu_executor": object()}, TypeError, "Executor"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Scheduler(**kwargs)  # type: ignore[arg-type]


def test_close_stops_threads_and_processes_and_refuses_new_work() -> None:
    sched = Scheduler(cpu_limit=2)
    sched.run_all_sync([call(T.double, 1)], kind="blocking")
    pids = sched.run_all_sync([call(T.getpid_sleep, 0.05) for _ in range(2)], kind="cpu")
    threads = [t for t in threading.enumerate() if t.name.startswith("tasklanes")]
    assert threads
    sched.close()
    assert not any(t.is_alive() for t in threads)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        sched.run_all_sync([call(T.double, 1)], kind="blocking")
    sched.close()  # idempotent


async def test_async_context_manager_closes_without_blocking_the_loop() -> None:
    """While ``async with`` waits for close(), the loop keeps running: a blocking task
    that only returns once the loop has ticked during the close proves it."""
    closing = threading.Event()
    loop_ran_during_close = threading.Event()
    started = threading.Event()

    def waits_for_the_loop() -> None:
        started.set()
        loop_ran_during_close.wait(20)

    async def ticker() -> None:
        ticks = 0
        while True:
            await anyio.sleep(0.01)
            if closing.is_set():
                ticks += 1
                if ticks >= 3:
                    loop_ran_during_close.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with Scheduler() as sched:
            assert await run_all([call(T.double, 2)], kind="cpu", scheduler=sched) == [4]
            caller = threading.Thread(target=_run_ignoring_close, args=(sched, waits_for_the_loop))
            caller.start()
            while not started.is_set():
                await anyio.sleep(0.01)
            closing.set()
        tg.cancel_scope.cancel()
    caller.join(30)
    assert sched.closed
    assert loop_ran_during_close.is_set(), "the loop stood still while the scheduler closed"


def _run_ignoring_close(sched: Scheduler, task: object) -> None:
    with contextlib.suppress(RuntimeError):  # the batch fails: its scheduler closed
        sched.run_all_sync([task], kind="blocking")


def test_get_scheduler_is_one_per_process_and_recreated_after_close() -> None:
    first = get_scheduler()
    assert get_scheduler() is first
    first.close()
    second = get_scheduler()
    assert second is not first and not second.closed


async def test_stats_add_up_across_lanes() -> None:
    async def boom() -> None:
        raise ValueError

    with Scheduler() as sched:
        await run_all([call(anyio.sleep, 0) for _ in range(3)] + [boom()],
                      return_exceptions=True, scheduler=sched)
        await run_all([call(T.double, 1), call(T.raise_custom, "x")], kind="blocking",
                      return_exceptions=True, scheduler=sched)
        await run_all([call(T.double, 1), call(T.exit_hard, 1), call(T.sleep_return, 5, 0)],
                      kind="cpu", timeout=0.5, return_exceptions=True, scheduler=sched)
        stats = sched.stats()
    io, blocking, cpu = stats["io"], stats["blocking"], stats["cpu"]
    assert (io.completed, io.failed) == (3, 1)
    assert (blocking.completed, blocking.failed) == (1, 1)
    assert (cpu.completed, cpu.crashed, cpu.timed_out, cpu.killed) == (1, 1, 1, 1)
    assert blocking.run.count == 2 and blocking.run.max >= 0
    assert cpu["run"]["count"] >= 1  # item access works too
    assert cpu.capacity == sched.capacity("cpu")


async def test_cpu_on_a_thread_pool_executor() -> None:
    """Any concurrent.futures.Executor can carry the cpu lane (here: threads)."""
    with ThreadPoolExecutor(3) as pool, Scheduler(cpu_executor=pool) as sched:
        assert sched.capacity("cpu") == 3
        results = await run_all([call(T.double, i) for i in range(10)], kind="cpu",
                                scheduler=sched)
        assert results == [2 * i for i in range(10)]
        timed = await run_all([call(T.sleep_return, 0.5, 1)], kind="cpu", timeout=0.1,
                              return_exceptions=True, scheduler=sched)
        assert isinstance(timed[0], TaskTimeout)


DASK_SCRIPT = """
import distributed
from tasklanes import Scheduler, call
from tests import _tasks as T

if __name__ == "__main__":
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \\
            distributed.Client(cluster) as client:
        with Scheduler(cpu_executor=client.get_executor(), cpu_limit=2) as sched:
            assert sched.run_all_sync([call(T.double, i) for i in range(20)], kind="cpu") == [
                2 * i for i in range(20)]
            try:
                sched.run_all_sync([call(T.raise_custom, "remote")], kind="cpu")
            except T.CustomError as exc:
                assert "remote" in str(exc)
            else:
                raise AssertionError("no error")
            # Dask ships functions with cloudpickle: lambdas are fine there.
            assert sched.run_all_sync([lambda: 5], kind="cpu") == [5]
            stats = sched.stats()["cpu"]
            assert (stats.completed, stats.failed) == (21, 1), stats
        # Without cpu_limit: 256 tasks in flight (tasks and results go in bulk); and
        # pure=False, or Dask would compute identical calls only once.
        with Scheduler(cpu_executor=client.get_executor(pure=False)) as sched:
            assert sched.stats()["cpu"].capacity == 256
            assert sched.run_all_sync([call(T.double, 1)] * 6, kind="cpu") == [2] * 6
            assert sched.stats()["cpu"].completed == 6
    print("dask ok")
"""


@pytest.mark.timeout(180)
def test_cpu_on_a_dask_cluster(tmp_path: Path) -> None:
    """The cpu lane on a real Dask LocalCluster, via client.get_executor().

    Run in a subprocess: a Dask cluster keeps threads of its own alive after it closes,
    which the leak check would rightly count against the test.
    """
    pytest.importorskip("distributed")
    script = tmp_path / "dask_lane.py"
    script.write_text(DASK_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=170, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dask ok" in proc.stdout


def test_mp_context_by_name() -> None:
    with Scheduler(cpu_limit=1, mp_context="spawn") as sched:
        assert sched.run_all_sync([call(T.double, 4)], kind="cpu") == [8]


def test_exceptions_pickle() -> None:
    for exc in (TaskTimeout(3, 1.5), tasklanes.WorkerCrashed(2, -9)):
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc) and str(copy) == str(exc)
        assert copy.index == exc.index
    crashed = tasklanes.WorkerCrashed(1, -9)
    assert crashed.signal == "SIGKILL"
    assert isinstance(TaskTimeout(), TimeoutError)


def test_timeouts_reported_promptly_under_load() -> None:
    start = time.monotonic()
    with Scheduler() as sched:
        results = sched.run_all_sync(
            [call(T.sleep_return, 0.01, i) for i in range(50)] + [call(T.sleep_return, 3, -1)],
            kind="blocking", timeout=0.3, return_exceptions=True,
        )
    assert isinstance(results[-1], TaskTimeout)
    assert results[:-1] == list(range(50))
    assert time.monotonic() - start < 5


def test_ordered_amap_on_a_foreign_executor_finishes() -> None:
    # The executor lane, too, must hand results over before it waits for the window
    # of an ordered amap.
    from concurrent.futures import ThreadPoolExecutor

    import anyio

    from . import _tasks as T

    async def main(sched: tasklanes.Scheduler) -> None:
        for repeat in range(20):
            with anyio.fail_after(10):
                out = [x async for x in sched.amap(T.double, range(150), "cpu", limit=3)]
            assert out == [2 * i for i in range(150)], repeat

    with ThreadPoolExecutor(4) as pool, tasklanes.Scheduler(cpu_executor=pool) as sched:
        anyio.run(main, sched)
def test_schedulers_share_one_exit_hook() -> None:
    """Each Scheduler used to add an atexit entry it never removed (issue 10, #5)."""
    import atexit

    first = Scheduler()
    first.run_all_sync([call(T.double, 1)], kind="blocking")
    first.close()
    before = atexit._ncallbacks()
    for _ in range(5):
        with Scheduler() as sched:
            sched.run_all_sync([call(T.double, 1)], kind="blocking")
    assert atexit._ncallbacks() == before


def test_close_waits_a_bounded_time_for_a_thread_that_ignores_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A blocking task that never calls check_cancelled() cannot hold close() for
    ever (issue 10, #6): after ``timeout`` its thread is abandoned, with a warning."""
    release = threading.Event()
    sched = Scheduler(blocking_limit=2)
    started = threading.Event()

    def stubborn() -> None:
        started.set()
        release.wait(60)  # never looks at check_cancelled()

    outcome: list[BaseException] = []

    def batch() -> None:
        try:
            sched.run_all_sync([stubborn], kind="blocking")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=batch)
    caller.start()
    try:
        assert started.wait(10)
        caplog.set_level("WARNING", logger="tasklanes")
        began = time.monotonic()
        sched.close(timeout=0.5)
        took = time.monotonic() - began
        assert took < 10, f"close(timeout=0.5) took {took:.1f} s"
        assert sched.closed
        warnings = [r for r in caplog.records if r.name.startswith("tasklanes")]
        assert warnings and warnings[0].levelname == "WARNING"
        assert "abandon" in warnings[0].getMessage()
    finally:
        release.set()
        caller.join(30)
    assert isinstance(outcome[0], RuntimeError) and "closed" in str(outcome[0])
    wait_for(lambda: not tasklanes_threads(), 10, "the abandoned thread to end")


def test_interpreter_exit_is_not_held_by_a_sleeping_thread(tmp_path: Path) -> None:
    """``time.sleep(3600)`` in a blocking task must not hang interpreter exit past the
    documented bound (issue 10, #6)."""
    script = tmp_path / "sleeper.py"
    script.write_text(
        "import logging, threading, time\n"
        "import tasklanes\n"
        "from tasklanes import call\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "def batch():\n"
        "    try:\n"
        "        tasklanes.run_all_sync([call(time.sleep, 3600)], kind='blocking')\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "threading.Thread(target=batch, daemon=True).start()\n"
        "while tasklanes.get_scheduler().stats()['blocking'].running < 1:\n"
        "    time.sleep(0.01)\n"
        "print('running', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail("interpreter exit hung on a sleeping blocking task")
    took = time.monotonic() - began
    assert proc.stdout.strip() == "running", proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "abandon" in proc.stderr
    assert took < 45


def test_a_dropped_scheduler_stops_its_threads_and_processes() -> None:
    """Like the standard library's executors, a Scheduler collected without close()
    stops its threads and worker processes (issue 10, #11)."""
    import gc
    import weakref

    sched = Scheduler(blocking_limit=3, cpu_limit=1)
    sched.run_all_sync([call(T.sleep_return, 0.01, i) for i in range(6)], kind="blocking")
    (pid,) = set(sched.run_all_sync([call(T.getpid_sleep, 0.0)], kind="cpu"))
    assert tasklanes_threads()
    ref = weakref.ref(sched)
    del sched
    gc.collect()
    assert ref() is None
    wait_for(lambda: not tasklanes_threads(), 10, "the dropped scheduler's threads to stop")
    wait_for(lambda: not pid_exists(pid), 10, "its worker process to stop")


def test_nested_blocking_batch_on_a_full_lane_fails_at_once() -> None:
    """Blocking tasks that start blocking batches on their own lane, with every thread
    busy with such a task, used to wait forever (issue 10, #8)."""
    sched = Scheduler(blocking_limit=2)
    outcomes: list[object] = []

    def outer(i: int) -> object:
        time.sleep(0.05)  # both outer tasks hold a thread before either asks
        return sched.run_all_sync([call(T.double, i)], kind="blocking")

    caller = threading.Thread(
        target=lambda: outcomes.extend(
            sched.run_all_sync(
                [call(outer, i) for i in range(4)], kind="blocking", return_exceptions=True
            )
        )
    )
    caller.start()
    caller.join(20)
    try:
        assert not caller.is_alive(), "nested blocking batches hung"
        assert len(outcomes) == 4
        for outcome in outcomes:
            assert isinstance(outcome, RuntimeError), outcome
            assert "blocking task" in str(outcome) and "Scheduler(" in str(outcome)
    finally:
        sched.close(timeout=1)


def test_nested_blocking_batch_on_another_scheduler_runs() -> None:
    with Scheduler(blocking_limit=1) as outer_sched, Scheduler(blocking_limit=2) as inner:

        def outer(i: int) -> list[int]:
            return inner.run_all_sync([call(T.double, i), call(T.double, i + 1)], kind="blocking")

        assert outer_sched.run_all_sync([call(outer, 1)], kind="blocking") == [[2, 4]]


def test_nested_cpu_batch_in_a_worker_process_fails_at_once_saying_why() -> None:
    with Scheduler(cpu_limit=1) as sched:
        [(took, outcome)] = sched.run_all_sync([call(T.nested_cpu_batch)], kind="cpu")
    assert outcome.startswith("RuntimeError"), outcome
    assert "worker process" in outcome and "__main__" not in outcome, outcome
    assert took < 0.5, f"the worker heard back after {took:.2f} s"


def test_a_blocking_task_may_close_its_own_scheduler(caplog: pytest.LogCaptureFixture) -> None:
    """close() from one of the scheduler's own threads does not wait for itself."""
    sched = Scheduler(blocking_limit=2)
    caplog.set_level("WARNING", logger="tasklanes")

    took: list[float] = []

    def closes_its_scheduler() -> None:
        start = time.monotonic()
        sched.close()
        took.append(time.monotonic() - start)

    # Its own batch then fails (the scheduler closed under it), as any running batch.
    [outcome] = sched.run_all_sync(
        [call(closes_its_scheduler)], kind="blocking", return_exceptions=True
    )
    assert isinstance(outcome, RuntimeError) and "closed" in str(outcome)
    assert took and took[0] < 2, f"close() from a worker thread took {took} s"
    assert sched.closed
    assert not [r for r in caplog.records if r.name.startswith("tasklanes")]
    wait_for(lambda: not tasklanes_threads(), 10, "the scheduler's threads to stop")


def test_a_plain_io_batch_loads_no_process_controls_or_progress_code(tmp_path: Path) -> None:
    # A script that only runs coroutines pays for what it uses: multiprocessing, the
    # controls (limiters, retries) and progress reporting are imported by the calls
    # that use them, not by every call.
    out = run_json_script(
        tmp_path,
        "import asyncio, json, sys\n"
        "from tasklanes import call, run_all\n"
        "async def one(i):\n"
        "    await asyncio.sleep(0)\n"
        "    return i\n"
        "async def main():\n"
        "    got = await run_all([one(i) for i in range(100)], limit=10)\n"
        "    before = [m for m in ('multiprocessing', 'tasklanes._control',\n"
        "                          'tasklanes._progress', 'random') if m in sys.modules]\n"
        "    again = await run_all([call(one, i) for i in range(3)], retry=2,\n"
        "                          progress=lambda u: None)\n"
        "    after = [m for m in ('tasklanes._control', 'tasklanes._progress') if m in sys.modules]\n"
        "    print(json.dumps({'got': got + again, 'before': before, 'after': after}))\n"
        "asyncio.run(main())\n"
    )
    assert out["got"] == [*range(100), 0, 1, 2]
    assert out["before"] == []
    assert out["after"] == ["tasklanes._control", "tasklanes._progress"]
