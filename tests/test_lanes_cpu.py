"""The cpu lane through the public API (tasklanes/_lanes/_cpu.py): real processes."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, call, run_all

from . import _pool_tasks as PT
from . import _tasks as T
from ._helpers import pid_running

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def wait_for_file(path: Path, seconds: float = 10.0) -> str:
    with anyio.fail_after(seconds):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.01)
    return path.read_text()


START_METHODS = [
    pytest.param(
        "fork",
        # Python 3.12+ warns when fork() runs while threads are alive; a pool with
        # mp_context="fork" always has its own (docs/start-methods.md). Only that
        # warning is let through; everything else still fails the test.
        marks=pytest.mark.filterwarnings(
            r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead "
            r"to deadlocks in the child:DeprecationWarning"
        ),
        id="fork",
    ),
    pytest.param("forkserver", id="forkserver"),
    pytest.param("spawn", id="spawn"),
]


@pytest.fixture(params=START_METHODS)
def each_start_method(request: pytest.FixtureRequest) -> Iterator[Scheduler]:
    """A scheduler per start method, for the tests that must hold under all three."""
    with Scheduler(mp_context=request.param) as sched:
        yield sched


async def test_every_start_method_runs_tasks(each_start_method: Scheduler) -> None:
    # Regression (issue 10, hazard 7): under "fork" every worker died at start with
    # "memoryview: a bytes-like object is required, not 'SharedBlock'".
    results = await run_all(
        [call(T.double, i) for i in range(200)], kind="cpu", scheduler=each_start_method
    )
    assert results == [2 * i for i in range(200)]
    pids = await run_all(
        [call(T.getpid_sleep, 0.05) for _ in range(6)], kind="cpu", scheduler=each_start_method
    )
    assert os.getpid() not in pids


async def test_a_functions_task_time_sizes_the_first_chunks_of_its_next_batch(
    scheduler: Scheduler,
) -> None:
    tasks = [call(T.double, i) for i in range(500)]
    assert await run_all(tasks, kind="cpu", scheduler=scheduler) == [2 * i for i in range(500)]
    lane = scheduler._lanes["cpu"]
    seconds = lane.expected_seconds(T.double)  # type: ignore[attr-defined]
    assert seconds is not None and 0 < seconds < 1
    chunks = lane.pool_stats()["chunks"]  # type: ignore[attr-defined]
    # The next batch of it starts with full chunks (no ramp from one task): few
    # chunks for 4000 tasks, every result in order; a generator input too.
    assert await run_all(
        [call(T.double, i) for i in range(4000)], kind="cpu", scheduler=scheduler
    ) == [2 * i for i in range(4000)]
    assert await run_all(
        (call(T.double, i) for i in range(4000)), kind="cpu", scheduler=scheduler
    ) == [2 * i for i in range(4000)]
    assert lane.pool_stats()["chunks"] - chunks < 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("ordered", [True, False])
async def test_amap_of_tiny_tasks_keeps_the_pool_fed(scheduler: Scheduler, ordered: bool) -> None:
    # The iterator's window grows to what the pool asks for (thousands of tiny
    # tasks), rather than 2 x limit: chunks stay big instead of 2-3 tasks each.
    lane = scheduler._lanes.get("cpu")
    before = lane.pool_stats()["chunks"] if lane is not None else 0  # type: ignore[attr-defined]
    got = [x async for x in scheduler.amap(T.double, range(6000), kind="cpu", ordered=ordered)]
    assert sorted(got) == [2 * i for i in range(6000)]
    if ordered:
        assert got == [2 * i for i in range(6000)]
    chunks = scheduler._lanes["cpu"].pool_stats()["chunks"] - before  # type: ignore[attr-defined]
    assert chunks < 600  # a 16-task window made about 2000


@pytest.mark.parametrize("ordered", [True, False])
async def test_amap_sends_the_items_themselves_with_no_task_built_each(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, ordered: bool
) -> None:
    # The cpu lane's own pool takes amap's items as they are (`Batch.map_fn`): the
    # generic path, a `Call` per item, must not be taken, for any kind of input.
    import tasklanes._scheduler as S

    def no_tasks(*args: object) -> None:
        raise AssertionError("amap built a task per item")

    monkeypatch.setattr(S, "_map_tasks", no_tasks)

    async def agen() -> AsyncIterator[int]:
        for i in range(500):
            yield i

    want = [2 * i for i in range(500)]
    for items in (list(range(500)), range(500), iter(range(500)), agen()):
        got = [x async for x in scheduler.amap(T.double, items, kind="cpu", ordered=ordered)]
        assert (got if ordered else sorted(got)) == want
    # A tuple item stays one argument.
    got = [x async for x in scheduler.amap(PT.identity, [(1, 2), (3,)], kind="cpu")]
    assert got == [(1, 2), (3,)]


async def test_amap_items_fail_crash_and_time_out_one_by_one(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    # On the item path, as with tasks: a crash costs the one item it ran (none lost,
    # none run twice), a timeout kills only its own, an error or an item that does
    # not pickle fails alone, naming its index.
    import threading

    from tasklanes import TaskTimeout as Timeout

    from . import _reliability_tasks as RT

    d = str(tmp_path)
    plan = {7: ("crash", 0.0), 40: ("hang", 60.0), 55: ("raise", 0.0)}
    items: list[object] = [(d, i, *plan.get(i, ("ok", 0.0))) for i in range(300)]
    items[90] = threading.Lock()  # does not pickle
    with anyio.fail_after(50):
        got = [
            x
            async for x in scheduler.amap(
                RT.probe_item, items, kind="cpu", timeout=3, return_exceptions=True
            )
        ]
    assert isinstance(got[7], WorkerCrashed)
    assert isinstance(got[40], Timeout)
    assert isinstance(got[55], ValueError) and "boom 55" in str(got[55])
    assert isinstance(got[90], TypeError) and "task 90 could not be pickled" in str(got[90])
    for i, value in enumerate(got):
        if i not in (7, 40, 55, 90):
            assert value == i * 10
    assert sorted(RT.started(d)) == [i for i in range(300) if i != 90]
    assert not RT.prefixed(d, "dup-")  # none ran twice


async def test_amap_of_items_raises_the_first_failure_as_itself(scheduler: Scheduler) -> None:
    with pytest.raises(ValueError, match="bad") as info:
        async for _ in scheduler.amap(T.fail_on_bad, ["ok", "ok", "bad"], kind="cpu"):
            pass
    assert any("task 2" in note for note in info.value.__notes__)


async def test_leaving_an_amap_of_items_kills_its_running_workers(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    from . import _reliability_tasks as RT

    d = str(tmp_path)
    items = [(d, 0, "ok", 0.0)] + [(d, i, "hang", 60.0) for i in range(1, 50)]
    with anyio.fail_after(30):
        async with scheduler.amap(RT.probe_item, items, kind="cpu", ordered=False) as it:
            assert await it.__anext__() == 0
            while len(RT.started(d)) < 2:  # a hanging item runs
                await anyio.sleep(0.01)
    # Left: no item of it runs any more, and the rest never start.
    pids = {pid for i, pid in RT.started(d).items() if i >= 1}  # hanging items' workers
    assert not [pid for pid in pids if pid_running(pid)]
    count = len(RT.started(d))
    await anyio.sleep(0.3)
    assert len(RT.started(d)) == count


async def test_amap_window_stays_bounded_for_a_slow_consumer(scheduler: Scheduler) -> None:
    from tasklanes._batch import MAX_WINDOW

    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(10 * MAX_WINDOW):
            pulled += 1
            yield i

    async with scheduler.amap(T.double, items(), kind="cpu") as it:
        assert await it.__anext__() == 0
        await anyio.sleep(1.0)  # the lane pulls as far as the window lets it
        # At most a window of outcomes buffered and a window in flight, however
        # long the input: never the whole generator.
        assert pulled <= 2 * MAX_WINDOW + 256
        assert await it.__anext__() == 2


async def test_run_all_pulls_a_lazy_input_ahead_at_most_a_bounded_amount(
    scheduler: Scheduler,
) -> None:
    # A warm start (the lane knows `double`'s time) pulls the pool's whole demand at
    # once; with the only worker stuck, what is pulled ahead stays bounded all the same.
    from tasklanes._lanes._cpu import _MAX_QUEUED

    await scheduler.run_all([call(T.double, i) for i in range(3000)], kind="cpu", limit=1)
    pulled = 0
    total = 4 * _MAX_QUEUED

    def tasks() -> Iterator[object]:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield call(T.sleep_return, 1.0, 2) if i == 1 else call(T.double, i)

    seen: list[int] = []

    async def watch() -> None:
        await anyio.sleep(0.5)
        seen.append(pulled)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        results = await scheduler.run_all(tasks(), kind="cpu", limit=1)
    assert results == [2 * i for i in range(total)]
    assert 0 < seen[0] <= _MAX_QUEUED + 256


async def test_results_in_order(scheduler: Scheduler) -> None:
    results = await run_all(
        [call(T.double, i) for i in range(200)], kind="cpu", scheduler=scheduler
    )
    assert results == [2 * i for i in range(200)]


async def test_tasks_really_run_in_other_processes(scheduler: Scheduler) -> None:
    pids = await run_all(
        [call(T.getpid_sleep, 0.05) for _ in range(6)], kind="cpu", scheduler=scheduler
    )
    assert os.getpid() not in pids
    assert len(set(pids)) == scheduler.capacity("cpu")


async def test_exception_keeps_its_type_and_carries_the_worker_traceback(
    scheduler: Scheduler,
) -> None:
    with pytest.raises(T.CustomError, match="deep down") as info:
        await run_all([call(T.raise_custom, "deep down")], kind="cpu", scheduler=scheduler)
    notes = "\n".join(info.value.__notes__)
    assert "Traceback in worker process" in notes
    assert "raise_custom" in notes  # the frame inside the worker
    assert "task 0" in notes


async def test_a_crash_costs_only_the_task_that_was_running(each_start_method: Scheduler) -> None:
    scheduler = each_start_method
    results = await run_all(
        [call(T.exit_on, i, 10) for i in range(40)],
        kind="cpu",
        return_exceptions=True,
        scheduler=scheduler,
    )
    crashed = [r for r in results if isinstance(r, WorkerCrashed)]
    assert len(crashed) == 1 and crashed[0].index == 10
    assert crashed[0].exitcode == 3
    assert [r for i, r in enumerate(results) if i != 10] == [i for i in range(40) if i != 10]
    # The pool healed: a new batch runs on a full set of workers (once the replacement
    # has started: a spawn worker takes a while on a loaded machine).
    with anyio.fail_after(30):
        while True:
            pids = await run_all(
                [call(T.getpid_sleep, 0.05) for _ in range(4)], kind="cpu", scheduler=scheduler
            )
            if len(set(pids)) == scheduler.capacity("cpu"):
                break
    assert scheduler.stats()["cpu"].crashed == 1


async def test_sigkill_from_outside_is_a_worker_crash(scheduler: Scheduler, tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    async def kill_it() -> None:
        pid = int(await wait_for_file(marker))
        os.kill(pid, signal.SIGKILL)

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_it)
        results = await run_all(
            [call(T.write_pid_and_spin, str(marker)), call(T.double, 21)],
            kind="cpu",
            return_exceptions=True,
            scheduler=scheduler,
        )
    assert isinstance(results[0], WorkerCrashed)
    assert results[0].signal == "SIGKILL"
    assert results[1] == 42


async def test_timeout_kills_the_worker_process(each_start_method: Scheduler, tmp_path: Path) -> None:
    scheduler = each_start_method
    marker = tmp_path / "pid"
    start = time.monotonic()
    results = await run_all(
        [call(T.write_pid_and_spin, str(marker)), call(T.double, 1)],
        kind="cpu",
        timeout=0.5,
        return_exceptions=True,
        scheduler=scheduler,
    )
    elapsed = time.monotonic() - start
    assert isinstance(results[0], TaskTimeout) and results[0].index == 0
    assert results[1] == 2
    assert elapsed < 0.5 + 2.0  # pool start-up plus the kill, generously
    # No work of the batch outlives the call: the worker is dead by the time it returns.
    pid = int(marker.read_text())
    assert not pid_running(pid)
    assert scheduler.stats()["cpu"].killed >= 1
    assert scheduler.stats()["cpu"].timed_out == 1


async def test_cancelling_the_caller_kills_running_tasks(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    with anyio.move_on_after(1.0):
        await run_all([call(T.write_pid_and_spin, str(marker))], kind="cpu", scheduler=scheduler)
    pid = int(marker.read_text())
    assert not pid_running(pid), "run_all returned while its worker still ran"


async def test_fail_fast_kills_the_batch_s_other_running_task(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"

    with pytest.raises(T.CustomError):
        await run_all(
            [
                call(T.write_pid_and_spin, str(marker)),
                call(T.sleep_return, 0.5, None),
                call(T.raise_custom, "now"),
            ],
            kind="cpu",
            scheduler=scheduler,
        )
    if marker.exists() and marker.read_text():
        assert not pid_running(int(marker.read_text()))


async def test_other_batches_are_untouched_by_a_kill(scheduler: Scheduler) -> None:
    async def other() -> list[object]:
        return await run_all([call(T.sleep_return, 0.3, "kept")], kind="cpu", scheduler=scheduler)

    async with anyio.create_task_group() as tg:
        box: list[list[object]] = []

        async def keep() -> None:
            box.append(await other())

        tg.start_soon(keep)
        await anyio.sleep(0.05)
        results = await run_all(
            [call(T.write_pid_and_spin, "/dev/null")],
            kind="cpu",
            timeout=0.2,
            return_exceptions=True,
            scheduler=scheduler,
        )
    assert isinstance(results[0], TaskTimeout)
    assert box == [["kept"]]


async def test_lambdas_and_closures_travel_by_value(each_start_method: Scheduler) -> None:
    # With the interactive extra (cloudpickle, in the test extra): see _pickling.
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    results = await run_all(
        [lambda: 1, call(add_offset, 1), call(T.double, 3), *[lambda i=i: i * i for i in range(50)]],
        kind="cpu", scheduler=each_start_method,
    )
    assert results == [1, 101, 6, *[i * i for i in range(50)]]


async def test_without_cloudpickle_a_lambda_is_refused_before_anything_runs(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # import cloudpickle fails
    with pytest.raises(TypeError, match=r"a lambda.*pip install 'tasklanes\[interactive\]'"):
        await run_all([call(T.double, 1), lambda: 1], kind="cpu", scheduler=scheduler)
    assert scheduler.stats()["cpu"].completed == 0


async def test_unpicklable_argument_names_the_task(scheduler: Scheduler) -> None:
    import threading

    with pytest.raises(TypeError, match="task 1") as info:
        await run_all(
            [call(T.double, 1), call(T.double, threading.Lock())], kind="cpu", scheduler=scheduler
        )
    assert "pickle" in str(info.value)


async def test_unpicklable_result_fails_that_task_only(scheduler: Scheduler) -> None:
    results = await run_all(
        [call(T.return_unpicklable), call(T.double, 2)],
        kind="cpu",
        return_exceptions=True,
        scheduler=scheduler,
    )
    assert isinstance(results[0], TypeError) and "pickle" in str(results[0])
    assert results[1] == 4


async def test_coroutine_is_refused_with_a_hint(scheduler: Scheduler) -> None:
    async def coro() -> None:
        pass

    c = coro()
    with pytest.raises(TypeError, match="kind='io'"):
        await run_all([c], kind="cpu", scheduler=scheduler)


async def test_offload_cpu_pickles_by_reference() -> None:
    assert await T.offloaded_square(7) == 49
    assert await T.offloaded_square.map(range(5)) == [0, 1, 4, 9, 16]


async def test_offload_cpu_timeout_kills() -> None:
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        await T.offloaded_spin()
    assert time.monotonic() - start < 0.5 + 3.0


async def test_tiny_and_long_batches_at_once(scheduler: Scheduler) -> None:
    """Long tasks are not starved by a flood of tiny ones, nor tiny ones serialized."""

    async def long_batch() -> float:
        t = time.monotonic()
        await run_all(
            [call(T.sleep_return, 0.3, i) for i in range(2)], kind="cpu", scheduler=scheduler
        )
        return time.monotonic() - t

    async def tiny_batch() -> float:
        t = time.monotonic()
        await run_all([call(T.double, i) for i in range(5000)], kind="cpu", scheduler=scheduler)
        return time.monotonic() - t

    await run_all([call(T.double, 0)], kind="cpu", scheduler=scheduler)  # warm the pool
    out: dict[str, float] = {}

    async def run(name: str, fn: object) -> None:
        out[name] = await fn()  # type: ignore[operator]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "long", long_batch)
        tg.start_soon(run, "tiny", tiny_batch)
    assert out["long"] < 2.0
    assert out["tiny"] < 3.0


UNGUARDED_SCRIPT = """
import math, threading, time
from tasklanes import call, run_all_sync
# A thread running when the pool starts: the default start method is then the
# forkserver, whose workers import the main module (a single-threaded script gets a
# zygote instead, whose workers do not: see test_processes_zygote.py).
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print(run_all_sync([call(math.factorial, 5) for _ in range(3)], kind="cpu"))
"""


def test_a_script_without_a_main_guard_fails_with_a_hint_instead_of_hanging(
    tmp_path: Path,
) -> None:
    # The worker side imports the main module; an unguarded script then tries to start
    # workers from inside the worker machinery. multiprocessing refuses, and the pool
    # must turn repeated refusals into errors that say what to do, not wait forever.
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=50
    )
    assert proc.returncode != 0
    assert "could not start a worker process" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr
    assert time.monotonic() - started < 40


async def test_many_tiny_tasks_from_a_list_all_arrive_and_are_counted(
    scheduler: Scheduler,
) -> None:
    # A list input takes the bulk path (one hand-over, results stored in bulk); the
    # figures must still add up task by task.
    n = 5000
    results = await run_all([call(T.double, i) for i in range(n)], kind="cpu", scheduler=scheduler)
    assert results == [2 * i for i in range(n)]
    cpu = scheduler.stats()["cpu"]
    assert cpu["completed"] == n
    assert cpu["failed"] == cpu["crashed"] == cpu["timed_out"] == 0
    assert cpu["running"] == cpu["waiting"] == 0


async def test_a_lazy_input_and_progress_take_the_one_by_one_path(scheduler: Scheduler) -> None:
    seen: list[int] = []
    results = await run_all(
        (call(T.double, i) for i in range(300)),
        kind="cpu",
        scheduler=scheduler,
        progress=lambda update: seen.append(update.done),
    )
    assert results == [2 * i for i in range(300)]
    assert seen[-1] == 300


def test_closing_the_scheduler_fails_a_running_batch_instead_of_leaving_it_hanging() -> None:
    error, _ = T.close_under_a_running_batch(
        Scheduler(cpu_limit=1), [call(T.sleep_return, 30, "late"), call(T.double, 2)], "cpu"
    )
    assert isinstance(error, RuntimeError)
    assert "closed" in str(error)


async def test_workers_recycled_after_max_tasks() -> None:
    with Scheduler(cpu_limit=2, cpu_max_tasks_per_worker=3) as sched:
        pids = await run_all(
            [call(T.getpid_sleep, 0) for _ in range(40)], kind="cpu", scheduler=sched
        )
        assert len(pids) == 40
        assert max(collections.Counter(pids).values()) <= 3
        assert sched.stats()["cpu"].recycled > 0
        assert sched.stats()["cpu"].crashed == 0


async def test_workers_recycled_past_memory_limit() -> None:
    with Scheduler(cpu_limit=1, cpu_max_worker_memory=100 << 20) as sched:
        [first] = await run_all([call(PT.hog, 150)], kind="cpu", scheduler=sched)
        later = await run_all(
            [call(T.getpid_sleep, 0) for _ in range(3)], kind="cpu", scheduler=sched
        )
        assert first not in later
        assert sched.stats()["cpu"].recycled >= 1


def test_recycling_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="cpu_max_tasks_per_worker"):
        Scheduler(cpu_max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="cpu_max_worker_memory"):
        Scheduler(cpu_max_worker_memory="1GB")  # type: ignore[arg-type]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="cpu_executor"):
        Scheduler(cpu_executor=executor, cpu_max_tasks_per_worker=5)


@pytest.mark.parametrize("method", [None, "forkserver"])
async def test_workers_run_at_the_lower_priority_asked_for(method: str | None) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    # Recycled after 2 tasks: the replacements are lowered too.
    with Scheduler(
        cpu_limit=2, cpu_worker_nice=7, cpu_max_tasks_per_worker=2, mp_context=method
    ) as sched:
        seen = await run_all(
            [call(T.pid_and_niceness, i) for i in range(8)], kind="cpu", scheduler=sched
        )
    assert {nice for _, nice in seen} == {min(mine + 7, 19)}
    assert len({pid for pid, _ in seen}) >= 4
    with Scheduler(cpu_limit=1) as sched:  # by default, the parent's priority
        [(_, nice)] = await run_all([call(T.pid_and_niceness, 0)], kind="cpu", scheduler=sched)
    assert nice == mine


def test_worker_nice_is_checked() -> None:
    with pytest.raises(ValueError, match="cpu_worker_nice"):
        Scheduler(cpu_worker_nice=20)
    with pytest.raises(ValueError, match="cpu_worker_nice"):
        Scheduler(cpu_worker_nice=-1)
    with pytest.raises(TypeError, match="cpu_worker_nice"):
        Scheduler(cpu_worker_nice=2.5)  # type: ignore[arg-type]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="cpu_executor"):
        Scheduler(cpu_executor=executor, cpu_worker_nice=5)
