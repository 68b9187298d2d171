"""Fault injection on the cpu lane: each fault costs only its own task, and the pool
heals (later batches succeed, the worker count is back to capacity).

Real worker processes, no mocks. Each test runs the faulty task in the middle of a
batch of good ones (``return_exceptions=True``), then checks the healing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, call

from . import _reliability_tasks as T
from ._helpers import pid_running, wait_for

pytestmark = [pytest.mark.timeout(60)]
CAPACITY = 2


@pytest.fixture(scope="module", autouse=True)
def _warm_forkserver() -> None:
    T.warm_forkserver()


@pytest.fixture
def sched() -> Iterator[Scheduler]:
    with Scheduler(cpu_limit=CAPACITY) as s:
        yield s


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def pool_stats(s: Scheduler) -> dict[str, int]:
    return s._lane("cpu").pool_stats()  # type: ignore[attr-defined]


def worker_pids(s: Scheduler) -> list[int]:
    return s._lane("cpu").pool.worker_pids()  # type: ignore[attr-defined]


def wait_file(path: Path, seconds: float = 10.0) -> int:
    wait_for(path.exists, seconds, f"{path}")
    return int(path.read_text())


def batch_with(fault: Any, n: int = 9, at: int = 4) -> list[Any]:
    tasks: list[Any] = [call(T.square, i) for i in range(n)]
    tasks[at] = fault
    return tasks


def run(s: Scheduler, tasks: list[Any], **kw: Any) -> list[Any]:
    kw.setdefault("return_exceptions", True)
    return s.run_all_sync(tasks, "cpu", **kw)


def check_only(results: list[Any], at: int, exc_type: type[BaseException]) -> BaseException:
    for i, r in enumerate(results):
        if i != at:
            assert r == i * i, (i, r)
    err = results[at]
    assert isinstance(err, exc_type), err
    return err


def assert_healed(s: Scheduler) -> None:
    """A later batch succeeds, and the pool is back to full strength."""
    assert run(s, [call(T.square, i) for i in range(20)], return_exceptions=False) == [
        i * i for i in range(20)
    ]
    wait_for(lambda: pool_stats(s)["workers"] == CAPACITY, 10, "the pool back to capacity")
    assert all(pid_running(p) for p in worker_pids(s))


# ------------------------------------------------------------------ crashes


def test_os_exit(sched: Scheduler) -> None:
    results = run(sched, batch_with(call(T.exit_now, 3)))
    err = check_only(results, 4, WorkerCrashed)
    assert err.index == 4 and err.exitcode == 3  # type: ignore[attr-defined]
    assert "exited with code 3" in str(err)
    assert sched.stats()["cpu"].crashed == 1
    assert_healed(sched)


def test_sigkill_from_outside(sched: Scheduler, tmp: Path) -> None:
    pidfile = tmp / "pid"

    async def main() -> list[Any]:
        async with anyio.create_task_group() as tg:
            out: list[Any] = []

            async def go() -> None:
                out.extend(
                    await sched.run_all(
                        batch_with(call(T.pid_then_sleep, str(pidfile), 30)),
                        "cpu",
                        return_exceptions=True,
                    )
                )

            tg.start_soon(go)
            pid = await anyio.to_thread.run_sync(wait_file, pidfile)
            os.kill(pid, signal.SIGKILL)
        return out

    t0 = time.monotonic()
    results = anyio.run(main)
    assert time.monotonic() - t0 < 10
    err = check_only(results, 4, WorkerCrashed)
    assert err.signal == "SIGKILL" and err.index == 4  # type: ignore[attr-defined]
    assert_healed(sched)


def test_segfault(sched: Scheduler) -> None:
    results = run(sched, batch_with(call(T.segfault)))
    err = check_only(results, 4, WorkerCrashed)
    assert err.signal == "SIGSEGV", err  # type: ignore[attr-defined]
    assert_healed(sched)


def test_memory_error(sched: Scheduler) -> None:
    """A failed allocation is an ordinary exception: same type, worker survives."""
    results = run(sched, batch_with(call(T.memory_error)))
    err = check_only(results, 4, MemoryError)
    assert any("Traceback in worker process" in n for n in getattr(err, "__notes__", ()))
    stats = sched.stats()["cpu"]
    assert stats.failed == 1 and stats.crashed == 0
    assert_healed(sched)


def test_crash_in_a_chunk_costs_only_that_task(sched: Scheduler) -> None:
    """Short tasks are chunked; a crash in the middle of a chunk fails only the crashing
    task, the rest of the chunk runs elsewhere."""
    tasks: list[Any] = [call(T.square, i) for i in range(3000)]
    tasks[1500] = call(T.exit_now, 5)
    results = run(sched, tasks)
    check_only(results, 1500, WorkerCrashed)
    assert_healed(sched)


# ------------------------------------------------------------------ hangs and timeouts


def test_hang_ignoring_sigterm_is_killed(sched: Scheduler, tmp: Path) -> None:
    """The timeout still stops it: SIGTERM is ignored, SIGKILL follows the grace."""
    pidfile = tmp / "pid"
    t0 = time.monotonic()
    results = run(
        sched, batch_with(call(T.ignore_sigterm_and_hang, str(pidfile), 30)), timeout=1.0
    )
    elapsed = time.monotonic() - t0
    err = check_only(results, 4, TaskTimeout)
    assert err.index == 4, err  # type: ignore[attr-defined]
    assert elapsed < 6, elapsed
    pid = int(pidfile.read_text())
    wait_for(lambda: not pid_running(pid), 5, "the hung worker to die")
    assert sched.stats()["cpu"].timed_out == 1
    assert pool_stats(sched)["killed"] >= 1
    assert_healed(sched)


# ------------------------------------------------------------------ results


def test_unpicklable_result(sched: Scheduler) -> None:
    results = run(sched, batch_with(call(T.unpicklable_result)))
    err = check_only(results, 4, TypeError)
    assert "task 4" in str(err) and "pickle" in str(err), err
    assert_healed(sched)


def test_100mb_result(sched: Scheduler) -> None:
    """A 100 MB result arrives whole, in reasonable time (a pipe moves 100 MB in well
    under a second; the bound is generous for a loaded machine)."""
    size = 100 * 1024 * 1024
    run(sched, [call(T.square, 1)])  # warm: the pool is up

    async def main() -> list[Any]:
        with anyio.move_on_after(BIG_RESULT_SECONDS) as scope:
            return await sched.run_all(
                batch_with(call(T.big_result, size)), "cpu", return_exceptions=True
            )
        assert not scope.cancelled_caught
        raise AssertionError(f"a 100 MB result took more than {BIG_RESULT_SECONDS} s")

    t0 = time.monotonic()
    results = anyio.run(main)
    elapsed = time.monotonic() - t0
    big = results[4]
    assert isinstance(big, bytes) and len(big) == size and big[:1] == big[-1:] == b"x"
    del big
    results[4] = 16
    assert results == [i * i for i in range(9)]
    print(f"100 MB result in {elapsed:.2f} s")
    assert_healed(sched)


BIG_RESULT_SECONDS = 10.0


# ------------------------------------------------------------------ forks


def test_task_that_forks(sched: Scheduler, tmp: Path) -> None:
    """The task forks; its child calls os._exit at once; the worker carries on."""
    results = run(sched, batch_with(call(T.fork_and_exit_child, str(tmp / "child"))))
    assert results[4] == 0
    results[4] = 16
    assert results == [i * i for i in range(9)]
    child = int((tmp / "child").read_text())
    assert not pid_running(child)
    assert sched.stats()["cpu"].crashed == 0
    assert_healed(sched)


def test_task_that_forks_and_leaves_a_child(sched: Scheduler, tmp: Path) -> None:
    """A grandchild that outlives its task (holding copies of the worker's pipes)
    must not make the pool wait for it, nor mistake it for the worker."""
    t0 = time.monotonic()
    results = run(sched, batch_with(call(T.fork_and_leave_child, str(tmp / "child"))))
    assert time.monotonic() - t0 < 5
    assert isinstance(results[4], int)
    results[4] = 16
    assert results == [i * i for i in range(9)]
    child = int((tmp / "child").read_text())
    wait_for(lambda: not pid_running(child), 5, "the task's child to exit")
    assert_healed(sched)


# ------------------------------------------------------------------ the forkserver


def _forkserver_pid() -> int:
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert pid is not None
    return int(pid)


def _kill_forkserver() -> int:
    pid = _forkserver_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_running(pid), 5, "the forkserver to die")
    return pid


def test_forkserver_killed_while_idle(sched: Scheduler) -> None:
    """The forkserver dies between batches: the next batch succeeds (a new server is
    started when a worker must be), and the old workers do not linger."""
    assert run(sched, [call(T.square, i) for i in range(4)]) == [0, 1, 4, 9]
    wait_for(lambda: pool_stats(sched)["workers"] == CAPACITY, 10)
    old = worker_pids(sched)
    dead = _kill_forkserver()
    try:
        assert run(sched, [call(T.square, i) for i in range(8)], return_exceptions=False) == [
            i * i for i in range(8)
        ]
        assert_healed(sched)
        assert _forkserver_pid() != dead
    finally:
        for pid in old:  # whatever happened, the old workers must not survive this
            wait_for(lambda p=pid: not pid_running(p), 5, f"old worker {pid} to exit")


def test_forkserver_killed_during_a_batch(sched: Scheduler, tmp: Path) -> None:
    """The forkserver dies while tasks run. Every task gets an outcome (its result or
    ``WorkerCrashed``), the pool heals, and no worker of the old server lingers."""

    async def main() -> list[Any]:
        out: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                tasks = [call(T.pid_then_sleep, str(tmp / f"pid{i}"), 0.5) for i in range(6)]
                out.extend(await sched.run_all(tasks, "cpu", return_exceptions=True))

            tg.start_soon(go)
            await anyio.to_thread.run_sync(wait_file, tmp / "pid0")
            _kill_forkserver()
        return out

    results = anyio.run(main)
    assert len(results) == 6
    for i, r in enumerate(results):
        assert isinstance(r, int) or type(r) is WorkerCrashed, (i, r)
    assert_healed(sched)
    seen = [int(f.read_text()) for f in tmp.glob("pid?")]
    wait_for(
        lambda: all(not pid_running(p) or p in worker_pids(sched) for p in seen),
        5,
        "the old server's workers to exit",
    )


# ------------------------------------------------------------------ many faults at once


def test_every_fault_in_one_batch(sched: Scheduler, tmp: Path) -> None:
    """All the faults above in one batch of good tasks, on a pool of two workers."""
    faults: dict[int, tuple[Any, type[BaseException]]] = {
        3: (call(T.exit_now, 9), WorkerCrashed),
        7: (call(T.segfault), WorkerCrashed),
        11: (call(T.memory_error), MemoryError),
        15: (call(T.unpicklable_result), TypeError),
        19: (call(T.ignore_sigterm_and_hang, str(tmp / "hang"), 30), TaskTimeout),
        23: (call(T.fork_and_exit_child, str(tmp / "fork")), type(None)),
    }
    tasks: list[Any] = [call(T.square, i) for i in range(30)]
    for i, (task, _) in faults.items():
        tasks[i] = task
    results = run(sched, tasks, timeout=1.5)
    for i, r in enumerate(results):
        if i in faults:
            if i == 23:
                assert r == 0
            else:
                assert isinstance(r, faults[i][1]), (i, r)
        else:
            assert r == i * i, (i, r)
    stats = sched.stats()["cpu"]
    assert (stats.crashed, stats.timed_out, stats.failed) == (2, 1, 2), stats
    assert stats.completed == 30 - 5
    assert_healed(sched)
