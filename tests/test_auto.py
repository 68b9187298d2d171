"""kind="auto": routing by measurement, on real threads, processes and event loops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

import tasklanes
from tasklanes import Scheduler, TaskTimeout, _auto, call
from tasklanes._auto import AutoDecision, AutoRouter, judge

from ._tasks import compute_politely, count_primes, polite_sleeper, raise_custom, sha256_hex

pytestmark = pytest.mark.anyio

PRIMES_N = 300_000  # about 0.3 s of pure Python here: well past the 50 ms rule
PRIMES = 25_997  # primes below PRIMES_N


class Caught(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, function: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "function", None) == function]


@pytest.fixture
def caught() -> Iterator[Caught]:
    handler = Caught()
    log = logging.getLogger("tasklanes.auto")
    old = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old)


@pytest.fixture
def sched() -> Iterator[Scheduler]:
    with Scheduler(blocking_limit=8, cpu_limit=2) as s:
        yield s


def decisions(sched: Scheduler, kind: str) -> dict[str, AutoDecision]:
    return {d.function: d for d in sched.stats()[kind].auto}


async def echo(i: int) -> int:
    await anyio.sleep(0.01)
    return i


# -- routing -----------------------------------------------------------------------------


async def test_coroutines_run_on_the_io_lane(sched: Scheduler, caught: Caught) -> None:
    results = await sched.run_all([echo(i) for i in range(20)], kind="auto")
    assert results == list(range(20))
    assert sched.stats()["io"].completed == 20
    assert sched.stats()["blocking"].completed == 0
    decision = decisions(sched, "io")[f"{__name__}.echo"]
    assert decision.kind == "io" and decision.cpu_share is None
    # call(async_fn, ...) is async code too, and the same function: logged once.
    assert await sched.run_all([call(echo, i) for i in range(5)], kind="auto") == list(range(5))
    assert sched.stats()["io"].completed == 25
    records = caught.about(f"{__name__}.echo")
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert records[0].kind == "io"  # type: ignore[attr-defined]


async def test_sleeping_tasks_run_on_the_blocking_lane(sched: Scheduler, caught: Caught) -> None:
    started = time.monotonic()
    results = await sched.run_all([call(time.sleep, 0.2) for _ in range(8)], kind="auto")
    elapsed = time.monotonic() - started
    assert results == [None] * 8
    stats = sched.stats()
    assert stats["blocking"].completed == 8 and stats["cpu"].completed == 0
    decision = decisions(sched, "blocking")["time.sleep"]
    assert decision.cpu_share is not None and decision.cpu_share < 0.8
    assert decision.wall is not None and decision.wall >= 0.05
    assert "waits" in decision.reason
    # Serially this is 1.6 s; the first task alone, then 7 threads: far less.
    assert elapsed < 1.4
    (record,) = caught.about("time.sleep")
    assert record.kind == "blocking"  # type: ignore[attr-defined]
    assert record.cpu_share == decision.cpu_share  # type: ignore[attr-defined]
    assert record.wall == decision.wall  # type: ignore[attr-defined]


async def test_a_prime_counter_moves_to_the_cpu_lane(sched: Scheduler, caught: Caught) -> None:
    results = await sched.run_all([call(count_primes, PRIMES_N) for _ in range(5)], kind="auto")
    assert results == [PRIMES] * 5
    stats = sched.stats()
    decision = decisions(sched, "cpu")[f"{count_primes.__module__}.count_primes"]
    assert decision.cpu_share is not None and decision.cpu_share >= 0.8
    assert "computes" in decision.reason and "GIL" not in decision.reason
    # The probe ran on a thread (three probes, if its start was not clear enough to
    # decide early); everything after the decision in worker processes.
    probes = stats["blocking"].completed
    assert probes in (1, 3)
    assert stats["cpu"].completed == 5 - probes
    (record,) = caught.about(decision.function)
    assert record.kind == "cpu"  # type: ignore[attr-defined]
    assert record.cpu_share >= 0.8  # type: ignore[attr-defined]
    assert "thread CPU" in record.getMessage()

    # The decision is kept: the next batch goes straight to the cpu lane.
    assert await sched.run_all([call(count_primes, 1000)] * 3, kind="auto") == [168] * 3
    assert sched.stats()["blocking"].completed == probes
    assert sched.stats()["cpu"].completed == 8 - probes
    assert len(caught.about(decision.function)) == 1


async def test_hashing_big_buffers_stays_on_threads() -> None:
    # sha256 computes, but with the GIL released: two threads compute at once, so
    # threads serve it as well as processes would, without pickling 64 MB a task.
    # The pair stage measures two threads' CPU shares; on a shared 2-core machine
    # another job can starve one of them below the "parallel" share for the whole
    # measurement, so a misjudged measurement is taken again, with a fresh Scheduler
    # (a decision is kept per Scheduler), up to three times.
    data = b"x" * (64 << 20)
    key = f"{sha256_hex.__module__}.sha256_hex"
    for _ in range(3):
        with Scheduler(blocking_limit=8, cpu_limit=2) as sched:
            results = await sched.run_all([call(sha256_hex, data) for _ in range(16)], kind="auto")
            assert results == [sha256_hex(data)] * 16
            stats = sched.stats()
            if key in decisions(sched, "blocking"):
                break
            # Misjudged: the batch went to the cpu lane, whole and correct.
            assert key in decisions(sched, "cpu")
    decision = decisions(sched, "blocking")[key]
    assert decision.cpu_share is not None and decision.cpu_share >= 0.8
    assert "releases the GIL" in decision.reason
    assert stats["cpu"].completed == 0 and stats["blocking"].completed == 16


def unpicklable_counter() -> Callable[[int], int]:
    """A computing closure that cannot reach a worker process, by reference or by
    value: it holds a lock."""
    lock = threading.Lock()

    def crunch(n: int) -> int:
        with lock:
            return count_primes(n)

    return crunch


async def test_computing_code_that_cannot_pickle_stays_on_the_blocking_lane(
    sched: Scheduler, caught: Caught
) -> None:
    crunch = unpicklable_counter()
    assert await sched.run_all([call(crunch, PRIMES_N)] * 3, kind="auto") == [PRIMES] * 3
    stats = sched.stats()
    assert stats["blocking"].completed == 3 and stats["cpu"].completed == 0
    (decision,) = [d for d in stats["blocking"].auto if "crunch" in d.function]
    assert decision.cpu_share is not None and decision.cpu_share >= 0.8
    assert "cpu lane cannot take it" in decision.reason and "pickle" in decision.reason
    (record,) = caught.about(decision.function)
    assert "cannot take it" in record.getMessage()


async def test_auto_gives_no_kind_advice_for_what_it_measured(sched: Scheduler) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", tasklanes.KindWarning)
        tasks = [lambda: count_primes(PRIMES_N) for _ in range(2)]
        await sched.run_all(tasks, kind="auto")
    assert not [w for w in seen if issubclass(w.category, tasklanes.KindWarning)]


async def test_short_tasks_stay_on_threads_and_the_input_stays_lazy(sched: Scheduler) -> None:
    pulled: list[int] = []

    def tasks() -> Iterator[object]:
        for i in range(200):
            pulled.append(i)
            yield call(abs, -i)

    assert await sched.run_all(tasks(), kind="auto") == list(range(200))
    decision = decisions(sched, "blocking")["builtins.abs"]
    assert decision.tasks == _auto.PROBE_MAX_TASKS
    assert "too short" in decision.reason
    assert pulled == list(range(200))


# -- the same API everywhere -------------------------------------------------------------


async def test_as_completed_and_amap(sched: Scheduler) -> None:
    seen = {}
    async with sched.as_completed(
        [call(count_primes, n) for n in (PRIMES_N, 100, 1000, 10)], kind="auto"
    ) as results:
        async for index, value in results:
            seen[index] = value
    assert seen == {0: PRIMES, 1: 25, 2: 168, 3: 4}
    async with sched.amap(echo, range(30), kind="auto", limit=7) as mapped:
        assert [x async for x in mapped] == list(range(30))
    got = [x async for x in tasklanes.amap(count_primes, [10, 100], kind="auto", scheduler=sched)]
    assert got == [4, 25]


def test_run_all_sync_and_unknown_kinds(sched: Scheduler) -> None:
    assert sched.run_all_sync([call(count_primes, 100)] * 3, kind="auto") == [25] * 3
    assert tasklanes.run_all_sync([call(abs, -2)], kind="auto", scheduler=sched) == [2]
    with pytest.raises(ValueError, match="'auto'"):
        tasklanes.run_all_sync([call(abs, 1)], kind="automatic")
    with pytest.raises(ValueError, match="auto"):
        sched.capacity("auto")


async def test_a_mixed_batch_is_refused_before_anything_runs(sched: Scheduler) -> None:
    ran: list[int] = []
    tasks = [call(ran.append, 1), echo(2)]
    with pytest.raises(TypeError, match="mixes async and sync"):
        await sched.run_all(tasks, kind="auto")
    assert ran == []
    tasks[1].close()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="not a task for kind='auto'"):
        await sched.run_all([42], kind="auto")


async def test_a_lazy_mixed_batch_fails_when_the_odd_task_comes(sched: Scheduler) -> None:
    async def tasks():  # type: ignore[no-untyped-def]
        yield call(echo, 1)
        yield call(abs, -1)

    with pytest.raises(TypeError, match="mixes async and sync"):
        await sched.run_all(tasks(), kind="auto")


async def test_failures_and_timeouts_keep_their_index(sched: Scheduler) -> None:
    with pytest.raises(tasklanes.TaskTimeout) as info:
        await sched.run_all([call(polite_sleeper, 5.0, [])], kind="auto", timeout=0.3)
    assert info.value.index == 0
    flag: list[str] = []
    results = await sched.run_all(
        [call(abs, -1), call(polite_sleeper, 5.0, flag), call(raise_custom, "x")],
        kind="auto",
        timeout=0.5,
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], TaskTimeout) and results[1].index == 1
    assert type(results[2]).__name__ == "CustomError"
    assert "task 2" in results[2].__notes__[0]
    with pytest.raises(Exception, match="boom") as failed:
        await sched.run_all([call(raise_custom, "boom"), call(abs, 1)], kind="auto")
    assert "task 0" in failed.value.__notes__[0]


async def test_a_limit_is_kept_across_the_switch(sched: Scheduler) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def task(seconds: float) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(seconds)
        with lock:
            running -= 1

    # The first task is still running when auto decides (after 50 ms): the rest gets
    # one slot fewer, so at most 3 run at once in all.
    await sched.run_all([call(task, 0.3)] + [call(task, 0.1)] * 12, kind="auto", limit=3)
    assert peak <= 3
    assert peak >= 2  # and the rest did not wait for the first task


# -- cancellation --------------------------------------------------------------------------


async def test_cancelled_while_measuring_leaves_nothing_running(sched: Scheduler) -> None:
    flags: list[list[str]] = [[] for _ in range(4)]
    tasks = [call(polite_sleeper, 5.0, flag) for flag in flags]
    started = time.monotonic()
    with anyio.move_on_after(0.3) as scope:
        # limit=1: auto waits for the first task to end before deciding.
        await sched.run_all(tasks, kind="auto", limit=1)
    assert scope.cancelled_caught
    assert time.monotonic() - started < 3.0
    assert flags[0] == ["TaskCancelled"]  # asked to stop, and run_all waited for it
    assert flags[1:] == [[], [], []]  # never started
    stats = sched.stats()
    assert stats["blocking"].running == 0 and stats["cpu"].running == 0
    assert stats["blocking"].auto == ()  # nothing decided


async def test_cancelled_after_the_switch_kills_the_workers(sched: Scheduler) -> None:
    # The first task runs on a thread (it is being measured) and a thread cannot be
    # killed: it stops because it checks; the rest run in processes, which are killed.
    started = time.monotonic()
    with anyio.move_on_after(1.5) as scope:
        await sched.run_all([call(compute_politely, 30.0)] * 4, kind="auto")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 10.0
    stats = sched.stats()
    assert stats["cpu"].running == 0 and stats["blocking"].running == 0
    assert stats["cpu"].killed >= 1


# -- the router ----------------------------------------------------------------------------


def test_judge_is_the_advice_rule() -> None:
    assert judge(0.09, 0.1) == (True, pytest.approx(0.9))
    assert judge(0.05, 0.1)[0] is False
    assert judge(0.04, 0.04)[0] is False  # under 50 ms
    # Time spent runnable without a core is not waiting: still computing.
    assert judge(0.05, 0.1, runnable=0.05)[0] is True


def test_the_router_is_bounded_and_measures_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_auto, "MAX_DECISIONS", 3)
    router = AutoRouter()
    for n in range(5):
        router.record(n, AutoDecision(f"f{n}", "cpu", "r", 1.0, 0.1, 1, time.monotonic()))
    assert [d.function for d in router.decisions()] == ["f2", "f3", "f4"]
    assert router.cached(4) is not None and router.cached(0) is None
    monkeypatch.setattr(_auto, "DECISION_TTL", 0.0)
    time.sleep(0.01)
    assert router.cached(4) is None  # due for measuring again
    router.record("io", AutoDecision("g", "io", "r", None, None, 0, 0.0))
    assert router.cached("io") is not None  # io decisions never expire


async def test_a_second_batch_measures_again_after_the_ttl(
    sched: Scheduler, caught: Caught, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_auto, "DECISION_TTL", 0.0)
    for _ in range(2):
        await sched.run_all([call(time.sleep, 0.06)] * 2, kind="auto")
    assert len(caught.about("time.sleep")) == 2


# -- @offload(kind="auto") -----------------------------------------------------------------


async def test_offload_auto_measures_once_then_goes_straight(caught: Caught) -> None:
    from ._tasks import offloaded_auto_primes

    assert await offloaded_auto_primes(PRIMES_N) == PRIMES  # measured on a thread
    assert await offloaded_auto_primes.map([100, 1000, 10]) == [25, 168, 4]
    assert await offloaded_auto_primes.map([100, 10], limit=1) == [25, 4]
    stats = tasklanes.get_scheduler().stats()
    (decision,) = stats["cpu"].auto
    assert decision.function.endswith("offloaded_auto_primes")
    assert stats["blocking"].completed == 1 and stats["cpu"].completed == 5
    assert len(caught.about(decision.function)) == 1


async def test_offload_auto_of_an_async_function_is_io() -> None:
    @tasklanes.offload(kind="auto")
    async def get(x: int) -> int:
        return x

    assert get.kind == "io"
    assert await get(3) == 3


async def test_an_async_input_keeps_its_order_across_the_switch(sched: Scheduler) -> None:
    sizes = [PRIMES_N, 10, 100, 1000, 10, 100, 1000, 10]

    async def tasks():  # type: ignore[no-untyped-def]
        for n in sizes:
            await anyio.sleep(0)
            yield call(count_primes, n)

    updates: list[tasklanes.ProgressUpdate] = []
    results = await sched.run_all(tasks(), kind="auto", progress=updates.append)
    assert results == [PRIMES, 4, 25, 168, 4, 25, 168, 4]
    assert updates[-1].done == len(sizes) and updates[-1].finished


async def test_a_lambda_that_returns_a_coroutine_is_told_what_to_do(sched: Scheduler) -> None:
    with pytest.raises(TypeError, match="call\\(async_fn"):
        await sched.run_all([lambda: echo(1)], kind="auto")


async def test_limiters_and_retries_hold_across_the_switch(sched: Scheduler) -> None:
    lock = threading.Lock()
    running = peak = 0
    failed: set[int] = set()

    def task(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.06)
            if i % 4 == 1 and i not in failed:
                failed.add(i)
                raise ConnectionError("once")
            return i
        finally:
            with lock:
                running -= 1

    results = await sched.run_all(
        [call(task, i) for i in range(12)],
        kind="auto",
        limiter=tasklanes.Limiter(concurrency=3),
        retry=tasklanes.Retry(attempts=2, backoff=0.01),
    )
    assert results == list(range(12))
    assert peak <= 3
    assert failed == {1, 5, 9}
    assert sched.stats()["blocking"].retried == 3


async def test_tasks_waiting_for_a_limiter_show_in_the_chosen_lanes_limited_gauge() -> None:
    """kind="auto" with limiter=: the tasks waiting for the limiter are counted in the
    `limited` figure of the lane the batch runs on, not of a lane nobody sees."""
    from tasklanes import Limiter

    lim = Limiter(concurrency=1)
    first_running = anyio.Event()
    go_on = anyio.Event()

    async def task(i: int) -> int:
        if i == 0:
            first_running.set()
            await go_on.wait()
        return i

    with Scheduler() as sched:
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def batch() -> None:
                results.extend(
                    await sched.run_all([call(task, i) for i in range(4)], kind="auto", limiter=lim)
                )

            tg.start_soon(batch)
            with anyio.fail_after(10):
                await first_running.wait()
                while sched.stats()["io"].limited == 0:  # the three others wait
                    await anyio.sleep(0.005)
            assert sched.stats()["io"].limited == 3
            go_on.set()
        assert results == [0, 1, 2, 3]
        assert sched.stats()["io"].limited == 0
