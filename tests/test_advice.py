"""Kind advice, piece by piece, on real threads and real event loops."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Iterator
from typing import Any

import anyio
import pytest

import tasklanes
from tasklanes import KindWarning, call
from tasklanes._advice import (
    Advisor,
    ThreadMeter,
    check_advice_options,
    thread_cpu_time,
    thread_times,
)
from tasklanes._backend import LoopHandle


class Caught(logging.Handler):
    """Advice records, with an event for the first one (the watchdog is another thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


@pytest.fixture
def caught() -> Iterator[Caught]:
    handler = Caught()
    log = logging.getLogger("tasklanes.advice")
    log.addHandler(handler)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", KindWarning)
        yield handler
    log.removeHandler(handler)
    kinds = [w for w in seen if issubclass(w.category, KindWarning)]
    assert len(kinds) == len(handler.records), "every advice is both a warning and a record"


async def runner(task: Awaitable[Any]) -> Any:
    """Stands in for the io lane's runner: the frame just inside it is the task's."""
    return await task


async def run_watched(advisor: Advisor, task: Awaitable[Any]) -> Any:
    loop = LoopHandle()
    watch = advisor.watch_loop(loop.key, loop.call_soon_threadsafe, [runner.__code__])
    try:
        await anyio.sleep(0.05)  # let the watchdog post its first heartbeat
        return await runner(task)
    finally:
        watch.close()


async def sleeps_in_sync_call() -> None:
    time.sleep(0.5)  # the pitfall: a blocking call in an async def


async def computes() -> int:
    total = 0
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        total += 1
    return total


async def awaits_properly() -> None:
    await anyio.sleep(0.5)


@pytest.mark.anyio
async def test_a_sync_sleep_in_an_async_def_gets_blocking_advice(caught: Caught) -> None:
    advisor = Advisor(0.1)
    try:
        await run_watched(advisor, sleeps_in_sync_call())
        assert caught.arrived.wait(5)
    finally:
        advisor.close()
    [record] = caught.records
    message = record.getMessage()
    assert "sleeps_in_sync_call" in message
    assert "test_advice.py" in message
    assert "time.sleep(0.5)" in message, "names the line where it held the loop"
    assert 'kind="blocking"' in message and 'kind="cpu"' not in message
    assert record.levelno == logging.WARNING
    assert record.suggest == "blocking" and record.lane == "io"  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_busy_loop_in_an_async_def_gets_cpu_advice(caught: Caught) -> None:
    # On a loaded machine the loop thread may get less than half a core for a while:
    # a few tries, each with a fresh advisor (advice is once per function and advisor).
    for _ in range(4):
        caught.records.clear()
        caught.arrived.clear()
        advisor = Advisor(0.1)
        try:
            await run_watched(advisor, computes())
            assert caught.arrived.wait(5)
        finally:
            advisor.close()
        [record] = caught.records
        if record.suggest == "cpu":  # type: ignore[attr-defined]
            break
    message = record.getMessage()
    assert 'kind="cpu"' in message and 'kind="blocking"' not in message
    assert "computes" in message and "while time.monotonic() < end" in message


@pytest.mark.anyio
async def test_awaiting_gets_no_advice(caught: Caught) -> None:
    advisor = Advisor(0.1)
    try:
        await run_watched(advisor, awaits_properly())
    finally:
        advisor.close()
    assert not caught.records


@pytest.mark.anyio
async def test_advice_is_once_per_function_and_advisor(caught: Caught) -> None:
    advisor = Advisor(0.1)
    try:
        await run_watched(advisor, sleeps_in_sync_call())
        assert caught.arrived.wait(5)
        await run_watched(advisor, sleeps_in_sync_call())
        time.sleep(0.3)
    finally:
        advisor.close()
    assert len(caught.records) == 1
    assert advisor.advised(sleeps_in_sync_call)


# -- blocking tasks ----------------------------------------------------------------------


def hashes() -> int:
    import hashlib

    data = b"x" * 1024
    end = time.thread_time() + 0.15
    n = 0
    while time.thread_time() < end:
        data = hashlib.sha256(data).digest() * 32
        n += 1
    return n


def in_worker_thread(advisor: Advisor, task: Any, times: int = 1) -> bool:
    """What the blocking lane's runner does around its tasks, on a real worker thread:
    True if one of the `times` runs of `task` was advised."""
    out: list[bool] = []

    def main() -> None:
        meter = ThreadMeter(advisor)
        try:
            for _ in range(times):
                mark = meter.start()
                task()
                out.append(meter.stop(task, mark))
        finally:
            meter.close()

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    return any(out)


def test_a_computing_blocking_task_gets_cpu_advice(caught: Caught) -> None:
    advisor = Advisor()
    # After a first long task, the next ones are measured with the time the thread had
    # no core left out: a loaded machine does not hide the computing.
    assert in_worker_thread(advisor, hashes, times=4)
    [record] = caught.records
    message = record.getMessage()
    assert "hashes" in message and "test_advice.py" in message
    assert 'kind="cpu"' in message and 'kind="blocking"' not in message
    assert not in_worker_thread(advisor, hashes), "once per function"


def test_a_waiting_blocking_task_gets_none(caught: Caught) -> None:
    advisor = Advisor()
    assert not in_worker_thread(advisor, call(time.sleep, 0.2), times=2)
    assert not caught.records


def test_short_blocking_tasks_are_not_judged(caught: Caught) -> None:
    advisor = Advisor()
    assert not advisor.after_blocking(hashes, 0.04, 0.04)  # under 50 ms
    assert not advisor.after_blocking(hashes, 0.07, 0.1)  # 70% computing
    assert not advisor.after_blocking(hashes, 0.01, 0.1, 0.0)  # waited in a sync call
    assert advisor.after_blocking(hashes, 0.045, 0.1, 0.05)  # half the time had no core
    assert not advisor.after_blocking(hashes, 0.09, 0.1), "once per function"
    assert len(caught.records) == 1


def test_thread_cpu_time_reads_another_thread() -> None:
    started = threading.Event()
    done = threading.Event()
    ids: list[tuple[int, int]] = []

    def spin() -> None:
        ids.append((threading.get_native_id(), threading.get_ident()))
        started.set()
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        done.wait(10)

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        started.wait(5)
        native_id, ident = ids[0]
        deadline = time.monotonic() + 10
        while (thread_cpu_time(native_id, ident) or 0.0) < 0.15 and time.monotonic() < deadline:
            time.sleep(0.02)
        spent = thread_cpu_time(native_id, ident)
        assert spent is not None and spent >= 0.15
        times = thread_times(native_id, ident)
        assert times is not None and times[0] >= 0.15
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize(
    ("advice", "threshold", "error"),
    [
        ("yes", 0.1, TypeError),
        (True, "0.1", TypeError),
        (True, True, TypeError),
        (True, 0, ValueError),
        (True, -1.0, ValueError),
        (True, float("nan"), ValueError),
        (True, float("inf"), ValueError),
    ],
)
def test_bad_options_are_refused(advice: object, threshold: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="advice"):
        check_advice_options(advice, threshold)


def test_options_accept_numbers() -> None:
    assert check_advice_options(True, 1) == 1.0
    assert check_advice_options(False, 0.25) == 0.25


def test_kind_warning_is_exported() -> None:
    assert issubclass(tasklanes.KindWarning, UserWarning)
    assert "KindWarning" in tasklanes.__all__


# -- through the Scheduler ---------------------------------------------------------------


async def sync_call_in_async_def(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.anyio
async def test_the_io_lane_advises_through_the_scheduler(caught: Caught) -> None:
    with tasklanes.Scheduler() as sched:
        got = await tasklanes.run_all(
            [sync_call_in_async_def(0.4), sync_call_in_async_def(0.4)], scheduler=sched
        )
        assert got == [0.4, 0.4]
        assert caught.arrived.wait(5)
    [record] = caught.records  # once per function, though both tasks held the loop
    assert "sync_call_in_async_def" in record.getMessage()
    assert 'kind="blocking"' in record.getMessage()


def test_the_blocking_lane_advises_through_the_scheduler(caught: Caught) -> None:
    with tasklanes.Scheduler(blocking_limit=1) as sched:
        for _ in range(6):  # retried: a loaded machine may starve the thread
            sched.run_all_sync([hashes], kind="blocking")
            if caught.records:
                break
    [record] = caught.records
    assert "hashes" in record.getMessage() and 'kind="cpu"' in record.getMessage()


def test_advice_false_gives_none(caught: Caught) -> None:
    with tasklanes.Scheduler(advice=False) as sched:
        sched.run_all_sync([hashes, hashes], kind="blocking")
    assert not caught.records


def test_scheduler_validates_advice_options() -> None:
    with pytest.raises(ValueError, match="advice_threshold"):
        tasklanes.Scheduler(advice_threshold=0)
    with pytest.raises(TypeError, match="advice"):
        tasklanes.Scheduler(advice=1)  # type: ignore[arg-type]


def test_a_warning_filter_set_to_error_does_not_break_the_lane() -> None:
    # pyproject's filterwarnings = ["error"] applies here: the advice must not raise
    # on the worker thread (the task's result stands, the thread lives on).
    with tasklanes.Scheduler(blocking_limit=1) as sched:
        assert sched.run_all_sync([hashes, call(len, "ab")], kind="blocking")[1] == 2
        assert sched.stats()["blocking"].completed == 2
