"""The blocking lane (tasklanes/_lanes/_threads.py): shared threads, fairness, cancellation."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from tasklanes import Scheduler, TaskCancelled, call, check_cancelled, run_all
from tasklanes._lanes._threads import ThreadPool

from ._tasks import Gauge

pytestmark = pytest.mark.anyio


async def test_capacity_is_shared_by_every_call() -> None:
    gauge = Gauge()

    def task() -> None:
        with gauge:
            time.sleep(0.01)

    with Scheduler(blocking_limit=4) as sched:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lambda: run_all([task for _ in range(12)], kind="blocking",
                                              scheduler=sched))
    assert gauge.peak == 4


async def test_threads_are_reused_and_never_exceed_capacity() -> None:
    names: set[str] = set()

    def task() -> None:
        names.add(threading.current_thread().name)
        time.sleep(0.001)

    with Scheduler(blocking_limit=3) as sched:
        for _ in range(3):
            await run_all([task for _ in range(30)], kind="blocking", scheduler=sched)
    assert 1 <= len(names) <= 3
    assert all(n.startswith("tasklanes-blocking") for n in names)


async def test_two_batches_share_threads_fairly() -> None:
    """A long batch must not keep a short batch off the threads until it ends."""
    finished: dict[str, float] = {}

    def task() -> None:
        time.sleep(0.01)

    with Scheduler(blocking_limit=2) as sched:
        start = time.monotonic()

        async def batch(name: str, n: int) -> None:
            await run_all([task for _ in range(n)], kind="blocking", scheduler=sched)
            finished[name] = time.monotonic() - start

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch, "long", 100)
            await anyio.sleep(0.02)
            tg.start_soon(batch, "short", 4)
    assert finished["short"] < finished["long"] / 2


def test_check_cancelled_outside_a_task_does_nothing() -> None:
    check_cancelled()


async def test_check_cancelled_raises_task_cancelled_when_the_caller_gives_up() -> None:
    seen: list[BaseException] = []

    def task() -> None:
        try:
            while True:
                time.sleep(0.005)
                check_cancelled()
        except BaseException as exc:
            seen.append(exc)
            raise

    with anyio.move_on_after(0.1):
        await run_all([task], kind="blocking")
    assert len(seen) == 1 and isinstance(seen[0], TaskCancelled)


async def test_stats_live_gauges_and_totals() -> None:
    release = threading.Event()

    def task() -> None:
        release.wait(5)

    with Scheduler(blocking_limit=2) as sched:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_all([task for _ in range(5)], kind="blocking",
                                          scheduler=sched))
            with anyio.fail_after(5):
                while sched.stats()["blocking"].running < 2:
                    await anyio.sleep(0.01)
            snap = sched.stats()["blocking"]
            assert snap.running == 2
            # The lane takes only `limit` tasks beyond the running ones from its input.
            assert snap.waiting == 2
            release.set()
        snap = sched.stats()["blocking"]
    assert (snap.running, snap.waiting, snap.completed) == (0, 0, 5)
    assert snap.wait.count == 5 and snap.run.count == 5


def test_pool_close_joins_its_threads() -> None:
    pool = ThreadPool(3)

    class FakeJob:  # the smallest thing a thread can serve: nothing ready
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.ready: list[object] = []
            self.running: dict[object, float] = {}
            self.inbox = None
            self.cancelled = False
            self.refused = False  # read by a serving thread before it looks at `ready`
            self.admit = False
            self.serving = 1

    pool.offer(FakeJob(), 1)  # type: ignore[arg-type]
    assert pool.threads == 1
    threads = list(pool._threads)
    pool.close()
    assert threads and not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        pool.offer(FakeJob(), 1)  # type: ignore[arg-type]


async def test_closed_scheduler_refuses_work() -> None:
    sched = Scheduler()
    await run_all([call(time.sleep, 0)], kind="blocking", scheduler=sched)
    sched.close()
    with pytest.raises(RuntimeError, match="closed"):
        await run_all([call(time.sleep, 0)], kind="blocking", scheduler=sched)


@pytest.mark.anyio
async def test_ordered_amap_never_waits_for_its_gate_while_results_are_owed(
    scheduler: Scheduler,
) -> None:
    # The ordered window opens only as the oldest result is handed over; the lane must
    # hand results over rather than sit waiting for the window (that deadlocked).
    from . import _tasks as T

    for repeat in range(30):
        with anyio.fail_after(10):
            out = [x async for x in scheduler.amap(T.double, range(200), "blocking", limit=4)]
        assert out == [2 * i for i in range(200)], repeat


def test_closing_the_scheduler_fails_a_running_batch_and_stops_its_tasks() -> None:
    # Queued tasks fail at once; a running one is asked to stop (check_cancelled()
    # raises in it); the caller gets a RuntimeError instead of waiting forever.
    from . import _tasks as T

    flag: list[str] = []
    tasks = [call(T.polite_sleeper, 30.0, flag)] + [call(T.double, i) for i in range(5)]
    error, took = T.close_under_a_running_batch(
        Scheduler(blocking_limit=1), tasks, "blocking", seconds=10
    )
    assert took < 5  # the sleeper stopped at check_cancelled()
    assert isinstance(error, RuntimeError)
    assert "closed" in str(error)
    assert flag == ["TaskCancelled"]
