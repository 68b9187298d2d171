"""limiter=, rate= and retry= on the batch API, in every lane, on every loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasklanes import (
    Limiter,
    Limiters,
    Retry,
    Scheduler,
    TaskTimeout,
    amap,
    as_completed,
    call,
    offload,
    run_all,
    run_all_sync,
)

from ._control_tasks import crash_once, fail_until, stamp
from ._tasks import Gauge

pytestmark = pytest.mark.anyio


def run_on_asyncio_and_trio(main: Any, timeout: float) -> list[BaseException]:
    """Run `main` on an asyncio loop and a trio loop at once, each in its own thread;
    return what either raised."""
    import trio

    errors: list[BaseException] = []

    def runner(which: str) -> None:
        try:
            trio.run(main) if which == "trio" else asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(w,)) for w in ("asyncio", "trio")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def overlaps(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


# -- arguments --------------------------------------------------------------------------


async def test_bad_arguments_fail_before_anything_runs() -> None:
    ran: list[int] = []

    async def task() -> None:
        ran.append(1)

    with pytest.raises(TypeError, match="limiter must be a Limiter"):
        await run_all([task], limiter=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        await run_all([task], rate=0)
    with pytest.raises(TypeError, match="retry must be None, a number of attempts"):
        await run_all([task], retry="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry must be a number of attempts >= 1"):
        as_completed([task], retry=0)
    with pytest.raises(TypeError, match="limiter must be a Limiter"):
        run_all_sync([time.time], kind="blocking", limiter=object())  # type: ignore[arg-type]
    assert ran == []


async def test_a_coroutine_with_retry_is_a_type_error_suggesting_call() -> None:
    async def fetch(url: str) -> str:
        return url

    coro = fetch("a")
    with pytest.raises(TypeError, match=r"call\(fetch, url\)"):
        await run_all([call(fetch, "b"), coro], retry=3)
    # the coroutine was closed, not left to warn "never awaited"
    assert coro.cr_frame is None


# -- limiters in every lane ----------------------------------------------------------------


async def test_io_concurrency_limiter_bounds_tasks() -> None:
    gauge = Gauge()
    lim = Limiter(concurrency=3)

    async def task(i: int) -> int:
        with gauge:
            await anyio.sleep(0.01)
        return i

    results = await run_all([call(task, i) for i in range(30)], limiter=lim, limit=10)
    assert results == list(range(30))
    assert gauge.peak == 3
    assert lim.held == 0 and lim.waiting == 0


async def test_blocking_concurrency_limiter_bounds_tasks() -> None:
    gauge = Gauge()
    lim = Limiter(concurrency=2)

    def task(i: int) -> int:
        with gauge:
            time.sleep(0.01)
        return i

    results = await run_all([call(task, i) for i in range(20)], kind="blocking", limiter=lim)
    assert results == list(range(20))
    assert gauge.peak == 2 and lim.held == 0


async def test_cpu_concurrency_limiter_bounds_tasks(tmp_path: Path) -> None:
    lim = Limiter(concurrency=1)
    with Scheduler(cpu_limit=2) as sched:
        spans = await sched.run_all(
            [call(stamp, str(tmp_path), 0.05) for _ in range(6)], kind="cpu", limiter=lim
        )
    assert overlaps(spans) == 1  # two worker processes, yet one task at a time
    assert lim.held == 0


async def test_a_limiter_is_shared_by_two_calls() -> None:
    gauge = Gauge()
    lim = Limiter(concurrency=2)

    async def task() -> None:
        with gauge:
            await anyio.sleep(0.01)

    def blocking_task() -> None:
        with gauge:
            time.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_all([task] * 10, limiter=lim))
        tg.start_soon(lambda: run_all([blocking_task] * 10, kind="blocking", limiter=lim))
    assert gauge.peak == 2 and lim.held == 0


async def test_waiting_for_a_limiter_takes_no_thread() -> None:
    # A blocking batch behind a Limiter(concurrency=1) leaves the other thread free.
    lim = Limiter(concurrency=1)
    with Scheduler(blocking_limit=2) as sched:
        slow_done = anyio.Event()

        async def slow_batch() -> None:
            await sched.run_all([call(time.sleep, 0.1)] * 5, kind="blocking", limiter=lim)
            slow_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_batch)
            with anyio.fail_after(5):  # the first slow task has started (a loaded box)
                while sched.stats()["blocking"].running == 0:
                    await anyio.sleep(0.005)
            assert sched.stats()["blocking"].running == 1
            t0 = time.monotonic()
            await sched.run_all([call(time.sleep, 0.01)] * 10, kind="blocking")
            # ten tasks on the one free thread: they never waited for the slow batch
            assert time.monotonic() - t0 < 0.35
            assert not slow_done.is_set()


async def test_limiter_callable_per_task_and_per_item() -> None:
    per_key = Limiters(concurrency=1)
    gauges = {"a": Gauge(), "b": Gauge()}

    async def fetch(key: str) -> str:
        with gauges[key]:
            await anyio.sleep(0.01)
        return key

    keys = ["a", "b"] * 8
    got = [k async for k in amap(fetch, keys, limiter=lambda key: per_key[key])]
    assert got == keys
    assert gauges["a"].peak == 1 and gauges["b"].peak == 1
    # the others call it with the task
    results = await run_all(
        [call(fetch, k) for k in keys], limiter=lambda task: per_key[task.args[0]]
    )
    assert results == keys


async def test_rate_on_a_call() -> None:
    t0 = time.monotonic()
    await run_all([call(time.sleep, 0)] * 11, kind="blocking", rate=50)
    # ten gaps of 20 ms at least (less the catch-up for late wake-ups: 5 ms, once)
    assert time.monotonic() - t0 >= 10 / 50 - 0.25 / 50


async def test_cancel_while_waiting_holds_nothing() -> None:
    lim = Limiter(concurrency=1)
    await lim.acquire()  # held elsewhere: the batch can only wait
    started: list[int] = []

    def task() -> None:
        started.append(1)

    with anyio.move_on_after(0.1):
        await run_all([task] * 5, kind="blocking", limiter=lim)
    assert started == []
    assert lim.held == 1 and lim.waiting == 0
    lim.release()
    assert lim.try_acquire()
    lim.release()


async def test_a_timed_out_blocking_task_holds_its_limiter_until_its_thread_returns() -> None:
    lim = Limiter(concurrency=1)
    spans: list[tuple[float, float]] = []

    def task(seconds: float) -> None:
        start = time.monotonic()
        time.sleep(seconds)  # ignores check_cancelled(): runs to the end
        spans.append((start, time.monotonic()))

    results = await run_all(
        [call(task, 0.3), call(task, 0.01)],
        kind="blocking",
        timeout=0.1,
        limiter=lim,
        return_exceptions=True,
    )
    assert isinstance(results[0], TaskTimeout) and results[1] is None
    assert overlaps(spans) == 1  # the second began only after the first thread returned
    assert lim.held == 0


def test_two_event_loops_in_two_threads_share_a_limiter_through_run_all() -> None:
    gauge = Gauge()
    lim = Limiter(concurrency=1)

    async def task() -> None:
        with gauge:
            await anyio.sleep(0.005)

    def blocking_task() -> None:
        with gauge:
            time.sleep(0.005)

    async def main() -> None:
        await run_all([task] * 10, limiter=lim)
        await run_all([blocking_task] * 10, kind="blocking", limiter=lim)

    assert run_on_asyncio_and_trio(main, 60) == []
    assert gauge.started == 40 and gauge.peak == 1


# -- retry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["io", "blocking", "cpu"])
async def test_retry_until_it_works(kind: str, tmp_path: Path) -> None:
    retry = Retry(attempts=3, backoff=0.01)
    with Scheduler(cpu_limit=1) as sched:
        if kind == "io":
            counts: dict[int, int] = {}

            async def flaky(i: int) -> int:
                counts[i] = counts.get(i, 0) + 1
                if counts[i] < 3:
                    raise ConnectionResetError("reset")
                return i

            tasks: list[Any] = [call(flaky, i) for i in range(4)]
        else:
            tasks = [call(fail_until, str(tmp_path / f"t{i}"), 2, i) for i in range(4)]
        results = await sched.run_all(tasks, kind=kind, retry=retry, limit=2)
        assert results == [0, 1, 2, 3]
        assert sched.stats()[kind].retried == 8


async def test_the_last_error_says_how_many_attempts(tmp_path: Path) -> None:
    path = str(tmp_path / "count")
    with pytest.raises(ConnectionResetError) as info:
        await run_all(
            [call(fail_until, path, 10, "x")], kind="blocking", retry=Retry(3, backoff=0)
        )
    assert "(tasklanes: failed after 3 attempts)" in info.value.__notes__
    assert len(Path(path).read_text()) == 3


async def test_errors_not_in_on_are_not_retried() -> None:
    calls = 0

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("no")

    results = await run_all([bad], retry=5, return_exceptions=True)
    assert isinstance(results[0], ValueError) and calls == 1
    assert not any("attempts" in n for n in results[0].__notes__)


async def test_timeouts_are_retried_per_attempt() -> None:
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(5)
        return "ok"

    t0 = time.monotonic()
    assert await run_all([slow_then_fast], timeout=0.1, retry=Retry(2, backoff=0)) == ["ok"]
    assert calls == 2 and time.monotonic() - t0 < 4


async def test_cpu_worker_crash_is_retried(tmp_path: Path) -> None:
    with Scheduler(cpu_limit=1) as sched:
        results = await sched.run_all(
            [call(crash_once, str(tmp_path / "marker"))], kind="cpu", retry=Retry(2, backoff=0)
        )
    assert results == ["ok"]


async def test_retry_releases_limiters_during_backoff() -> None:
    lim = Limiter(concurrency=1)
    order: list[str] = []
    failed = False

    async def first() -> None:
        nonlocal failed
        order.append("first")
        if not failed:
            failed = True
            raise ConnectionError("once")

    async def second() -> None:
        order.append("second")

    await run_all([first, second], limiter=lim, retry=Retry(2, backoff=0.2, jitter=False))
    # while `first` waited out its backoff, `second` took the limiter
    assert order == ["first", "second", "first"]
    assert lim.held == 0


async def test_as_completed_yields_each_task_once_with_retry() -> None:
    seen: dict[int, int] = {}

    async def flaky(i: int) -> int:
        seen[i] = seen.get(i, 0) + 1
        if seen[i] == 1 and i % 2:
            raise TimeoutError("first try")
        return i

    got = [
        i
        async for i, _ in as_completed(
            [call(flaky, i) for i in range(10)], retry=Retry(2, backoff=0.01)
        )
    ]
    assert sorted(got) == list(range(10))
    ordered = [v async for v in amap(flaky, range(10, 20), retry=Retry(2, backoff=0.01))]
    assert ordered == list(range(10, 20))


async def test_offload_with_limiter_rate_and_retry() -> None:
    lim = Limiter(concurrency=1)
    gauge = Gauge()
    attempts = 0

    @offload(kind="io", limiter=lim, retry=Retry(2, backoff=0), rate=1000)
    async def fetch(i: int) -> int:
        nonlocal attempts
        with gauge:
            attempts += 1
            await anyio.sleep(0.005)
            if attempts == 1:
                raise ConnectionError("once")
        return i

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(fetch, i)
    assert gauge.peak == 1 and attempts == 6
    assert await fetch.map(range(3)) == [0, 1, 2]
    with pytest.raises(TypeError, match="retry must be"):
        offload(kind="io", retry="x")  # type: ignore[call-overload]


def test_run_all_sync_with_controls(tmp_path: Path) -> None:
    results = run_all_sync(
        [call(fail_until, str(tmp_path / "c"), 1, 7)],
        kind="blocking",
        retry=2,
        limiter=Limiter(concurrency=1),
        rate=100,
    )
    assert results == [7]
    assert os.path.exists(tmp_path / "c")


async def test_waiting_for_a_limiter_takes_no_io_slot() -> None:
    with Scheduler(io_limit=1) as sched:

        async def quick() -> None:
            await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            # two starts a second: after its first task this batch waits ~0.5 s
            tg.start_soon(lambda: sched.run_all([quick] * 3, rate=2))
            await anyio.sleep(0.1)
            t0 = time.monotonic()
            await sched.run_all([quick] * 5)
            assert time.monotonic() - t0 < 0.3  # the one io slot was free meanwhile


async def test_a_timed_out_cpu_task_holds_its_limiter_until_its_worker_is_gone(
    tmp_path: Path,
) -> None:
    from ._control_tasks import pid_gone
    from ._tasks import write_pid_and_spin

    lim = Limiter(concurrency=1)
    path = str(tmp_path / "pid")
    with Scheduler(cpu_limit=2) as sched:
        results = await sched.run_all(
            [call(write_pid_and_spin, path), call(pid_gone, path)],
            kind="cpu",
            timeout=0.5,
            limiter=lim,
            return_exceptions=True,
        )
    assert isinstance(results[0], TaskTimeout)
    assert results[1] is True  # the spinning worker was reaped before the next task began
    assert lim.held == 0


# -- the lane sees hand-out numbers; outcomes keep the input's indexes ----------------------


@pytest.mark.parametrize("kind", ["io", "blocking"])
async def test_a_retried_attempt_that_times_out_names_its_input_index(kind: str) -> None:
    """A retry is handed to the lane again (under a new lane index): its timeout, made
    by the lane, must still name the task's place in the input."""
    calls: dict[int, int] = {}

    def attempt(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        if i == 1 and calls[i] == 1:
            raise ConnectionError("first attempt refused")
        return i

    def blocking_task(i: int) -> int:
        if attempt(i) == 1:
            time.sleep(0.5)  # the second attempt overruns
        return i

    async def io_task(i: int) -> int:
        if attempt(i) == 1:
            await anyio.sleep(5)
        return i

    task = io_task if kind == "io" else blocking_task
    results = await run_all(
        [call(task, i) for i in range(4)],
        kind=kind,
        timeout=0.1,
        retry=Retry(2, on=(ConnectionError,), backoff=0.01),
        limiter=Limiter(concurrency=2),
        return_exceptions=True,
    )
    assert results[0] == 0 and results[2:] == [2, 3]
    assert isinstance(results[1], TaskTimeout)
    assert results[1].index == 1 and "task 1 " in str(results[1])
    assert calls[1] == 2


async def test_async_input_with_a_limiter_and_retry() -> None:
    """An async input is read in the background: a task admitted or retried meanwhile
    is handed out without waiting for the input's next item."""
    lim = Limiter(concurrency=2)
    fed = anyio.Event()
    calls: dict[int, int] = {}

    async def task(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        if i == 0 and calls[i] == 1:
            raise ConnectionError("once")
        if i == 0:
            fed.set()  # the retry ran: let the input end
        return i

    async def tasks() -> Any:
        for i in range(3):
            yield call(task, i)
        with anyio.fail_after(10):
            await fed.wait()  # ends only once task 0's retry has run

    results = await run_all(tasks(), limiter=lim, retry=Retry(2, backoff=0.01))
    assert results == [0, 1, 2] and calls[0] == 2
    assert lim.held == 0


# -- retry= alone on a list: first attempts keep their indexes (io: results stored in place) --


@pytest.mark.parametrize("kind", ["io", "blocking", "cpu"])
async def test_retry_alone_on_a_list_keeps_input_order(kind: str, tmp_path: Path) -> None:
    """Every fifth task fails once; its retry runs under a new lane index while the
    other tasks' first attempts report under their own: all land at their place."""
    n = 60
    flaky = set(range(0, n, 5))
    calls: dict[int, int] = {}

    async def io_task(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        await anyio.sleep(0)
        if i in flaky and calls[i] == 1:
            raise ConnectionResetError(f"{i} reset")
        return i * 10

    def sync_task(i: int) -> int:
        if i in flaky:
            return fail_until(str(tmp_path / f"t{i}"), 1, i * 10)  # type: ignore[return-value]
        return i * 10

    with Scheduler(cpu_limit=2) as sched:
        tasks: list[Any] = [
            call(io_task if kind == "io" else sync_task, i) for i in range(n)
        ]
        if kind == "cpu":
            tasks = [
                call(fail_until, str(tmp_path / f"t{i}"), 1, i * 10)
                if i in flaky
                else call(int, str(i * 10))
                for i in range(n)
            ]
        results = await sched.run_all(tasks, kind=kind, limit=4, retry=Retry(3, backoff=0.01))
        assert results == [i * 10 for i in range(n)]
        assert sched.stats()[kind].retried == len(flaky)
        assert sched.stats()[kind].completed == n


@pytest.mark.parametrize("timeout", [None, 10.0])
async def test_io_retry_alone_final_errors_and_notes_land_in_place(timeout: float | None) -> None:
    """Successes stored in place by the io lane, retried successes moved to their
    index, final failures (retried or not) at theirs with their notes."""
    calls: dict[int, int] = {}

    async def task(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        if i % 7 == 3:
            raise ConnectionError(f"{i} always")  # retried, then the final error
        if i % 7 == 5:
            raise ValueError(f"{i} not retryable")
        if i % 7 == 1 and calls[i] < 3:
            raise TimeoutError(f"{i} twice")  # the third attempt works
        return -i

    with Scheduler() as sched:
        results = await sched.run_all(
            [call(task, i) for i in range(40)],
            limit=3,
            timeout=timeout,
            retry=Retry(3, backoff=0.001),
            return_exceptions=True,
        )
        assert len(results) == 40
        for i, got in enumerate(results):
            if i % 7 == 3:
                assert isinstance(got, ConnectionError) and str(got) == f"{i} always"
                assert "(tasklanes: failed after 3 attempts)" in got.__notes__
                assert f"(tasklanes: raised by task {i} of the batch)" in got.__notes__
                assert calls[i] == 3
            elif i % 7 == 5:
                assert isinstance(got, ValueError) and calls[i] == 1
                assert not any("attempts" in note for note in got.__notes__)
            else:
                assert got == -i
                assert calls[i] == (3 if i % 7 == 1 else 1)
        stats = sched.stats()["io"]
        # i % 7 == 3: 6 tasks, 2 retries each; i % 7 == 1: 6 tasks, 2 retries each;
        # i % 7 == 5: 5 tasks. The lane counts each failed attempt.
        assert stats.retried == 24
        assert stats.completed == 40 - 6 - 5 and stats.failed == 6 * 3 + 6 * 2 + 5


async def test_io_retries_that_come_back_after_every_worker_ended() -> None:
    """Every first attempt fails; the retries come back once the io workers have
    run out of tasks and ended (one waits for them): the lane grows again to `limit`.
    The second attempts wait for one another, so fewer than `limit` workers hang."""
    limit = 5
    running = 0
    together = anyio.Event()
    calls: dict[int, int] = {}

    async def task(i: int) -> int:
        nonlocal running
        calls[i] = calls.get(i, 0) + 1
        if calls[i] == 1:
            raise ConnectionError("first")
        running += 1
        if running == limit:
            together.set()
        with anyio.fail_after(10):
            await together.wait()
        return i

    results = await run_all(
        [call(task, i) for i in range(20)],
        limit=limit,
        retry=Retry(2, backoff=0.05, jitter=False),
    )
    assert results == list(range(20))
    assert all(c == 2 for c in calls.values())


async def test_retry_alone_on_a_list_with_as_completed_and_amap() -> None:
    calls: dict[int, int] = {}

    async def flaky(i: int) -> int:
        calls[i] = calls.get(i, 0) + 1
        if calls[i] == 1 and i % 3 == 0:
            raise ConnectionError("once")
        return i

    seen = {
        i: v
        async for i, v in as_completed(
            [call(flaky, i) for i in range(30)], limit=4, retry=Retry(2, backoff=0.001)
        )
    }
    assert seen == {i: i for i in range(30)}
    ordered = [
        v async for v in amap(flaky, list(range(30, 60)), limit=4, retry=Retry(2, backoff=0.001))
    ]
    assert ordered == list(range(30, 60))


# -- lazy admission (io and blocking: the lane admits each task as it starts it) ----------


@pytest.mark.parametrize("kind", ["io", "blocking"])
@pytest.mark.parametrize("lazy_input", [False, True])
@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_lazy_admission_hands_over_to_the_waiting_path(
    kind: str, lazy_input: bool, timeout: float | None
) -> None:
    """A limiter that runs short part-way: the task it refuses and every later one go
    the waiting way, still admitted in input order, none lost, none run twice."""
    lim = Limiter(concurrency=1)
    order: list[int] = []
    gauge = Gauge()

    def sync_task(i: int) -> int:
        with gauge:
            order.append(i)
            time.sleep(0.001)
        return i

    async def async_task(i: int) -> int:
        with gauge:
            order.append(i)
            await anyio.sleep(0.001)
        return i

    fn = async_task if kind == "io" else sync_task
    n = 25
    tasks: Any = (call(fn, i) for i in range(n)) if lazy_input else [call(fn, i) for i in range(n)]
    results = await run_all(tasks, kind=kind, limit=8, timeout=timeout, limiter=lim)
    assert results == list(range(n))
    assert order == list(range(n))  # concurrency=1: start order is admission order
    assert gauge.peak == 1
    assert lim.held == 0 and lim.waiting == 0


@pytest.mark.parametrize("kind", ["io", "blocking"])
async def test_lazy_admission_with_room_takes_the_limiter_only_while_tasks_run(
    kind: str,
) -> None:
    lim = Limiter(concurrency=1000)
    seen: list[int] = []

    def sync_task(i: int) -> int:
        seen.append(lim.held)
        return i

    async def async_task(i: int) -> int:
        seen.append(lim.held)
        await anyio.sleep(0)
        return i

    fn = async_task if kind == "io" else sync_task
    results = await run_all([call(fn, i) for i in range(200)], kind=kind, limit=10, limiter=lim)
    assert results == list(range(200))
    assert 1 <= max(seen) <= 10  # never more than the running tasks
    assert lim.held == 0


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_a_cancelled_io_batch_gives_back_what_lazy_admission_took(
    timeout: float | None,
) -> None:
    lim = Limiter(concurrency=100)
    started = 0
    all_started = anyio.Event()

    async def task() -> None:
        nonlocal started
        started += 1
        if started == 10:
            all_started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_all([task] * 30, limit=10, timeout=timeout, limiter=lim))
        with anyio.fail_after(10):
            await all_started.wait()
        assert lim.held == 10
        tg.cancel_scope.cancel()
    assert lim.held == 0 and lim.waiting == 0


async def test_a_cancelled_blocking_batch_gives_back_what_lazy_admission_took() -> None:
    lim = Limiter(concurrency=100)
    release = threading.Event()
    gauge = Gauge()

    def task() -> None:
        with gauge:
            release.wait(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_all([task] * 30, kind="blocking", limit=4, limiter=lim))
        with anyio.fail_after(10):
            while gauge.now < 4:
                await anyio.sleep(0.005)
        assert lim.held == 4  # the running tasks only, not the 26 pulled ones
        tg.cancel_scope.cancel()
        release.set()
    assert lim.held == 0 and lim.waiting == 0


@pytest.mark.parametrize("kind", ["io", "blocking"])
async def test_a_failed_batch_gives_back_what_lazy_admission_took(kind: str) -> None:
    lim = Limiter(concurrency=100)

    def sync_task(i: int) -> None:
        if i == 3:
            raise KeyError("fail fast")
        time.sleep(0.02)

    async def async_task(i: int) -> None:
        if i == 3:
            raise KeyError("fail fast")
        await anyio.sleep(10)

    fn = async_task if kind == "io" else sync_task
    with pytest.raises(KeyError):
        await run_all([call(fn, i) for i in range(40)], kind=kind, limit=8, limiter=lim)
    assert lim.held == 0 and lim.waiting == 0


@pytest.mark.parametrize("concurrency", [50, 25])
def test_lazy_admission_shared_by_two_loops_in_two_threads(concurrency: int) -> None:
    """Two loops share one concurrency limiter; with room for both (50) or not (25:
    both batches run short at times and hand over to the waiting path)."""
    gauge = Gauge()
    lim = Limiter(concurrency=concurrency)

    async def task(i: int) -> int:
        with gauge:
            await anyio.sleep(0)
        return i

    def blocking_task(i: int) -> int:
        with gauge:
            pass
        return i

    async def main() -> None:
        n = 2000
        assert await run_all([call(task, i) for i in range(n)], limit=20, limiter=lim) == list(
            range(n)
        )
        assert await run_all(
            [call(blocking_task, i) for i in range(300)], kind="blocking", limit=20, limiter=lim
        ) == list(range(300))

    assert run_on_asyncio_and_trio(main, 120) == []
    assert gauge.started == 2 * 2300 and gauge.peak <= concurrency
    assert lim.held == 0 and lim.waiting == 0


async def test_a_refusal_ends_lazy_admission_for_every_io_worker() -> None:
    # Lazy admission on the io lane: tasks 0 and 1 are admitted as they start, task 2
    # is refused (two of the four permits are held outside the batch), and the rest
    # wait; permits freed outside the batch then admit them, while the workers of
    # tasks 0 and 1, which started under lazy admission, are still suspended. Every
    # task runs once, in order, and the limiter ends balanced. (The race this guards,
    # a worker that kept the lazy admission it saw before another worker's refusal,
    # showed only with two loops sharing the limiter under load: see
    # `test_lazy_admission_shared_by_two_loops_in_two_threads`.)
    lim = Limiter(concurrency=4)
    lim.try_acquire()
    lim.try_acquire()
    first = [anyio.Event(), anyio.Event()]
    rest = anyio.Event()
    ran: list[int] = []

    async def task(i: int) -> int:
        ran.append(i)
        await (first[i].wait() if i < 2 else rest.wait())
        return i

    results: list[list[int]] = []

    async def wait_until(predicate: Any) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await anyio.sleep(0.005)

    async def batch() -> None:
        results.append(await run_all([call(task, i) for i in range(6)], limit=3, limiter=lim))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        await wait_until(lambda: ran == [0, 1] and lim.held == 4)
        await anyio.sleep(0.05)  # task 2 refused meanwhile, none started
        assert ran == [0, 1]
        lim.release()
        lim.release()
        await wait_until(lambda: 2 in ran)
        await anyio.sleep(0.05)
        first[1].set()
        await wait_until(lambda: 3 in ran)
        first[0].set()
        rest.set()
    assert results == [list(range(6))]
    assert sorted(ran) == list(range(6))  # each ran once
    assert lim.held == 0 and lim.waiting == 0
