"""The iterator side of a batch (tasklanes/_batch.py): when the work of an
``as_completed``/``amap`` loop stops (contract: "Iterators and nesting")."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from tasklanes import amap, as_completed, call, check_cancelled

from ._helpers import wait_for

pytestmark = pytest.mark.anyio


class Journal:
    """Which tasks started and which ended (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: set[int] = set()
        self.ended: set[int] = set()

    def snapshot(self) -> tuple[set[int], set[int]]:
        with self.lock:
            return set(self.started), set(self.ended)

    def io_task(self, i: int) -> Callable[[], Any]:
        async def task() -> int:
            with self.lock:
                self.started.add(i)
            try:
                await anyio.sleep(0.0 if i == 0 else 30.0)
                return i
            finally:
                with self.lock:
                    self.ended.add(i)

        return task

    def blocking_task(self, i: int) -> Callable[[], int]:
        def task() -> int:
            with self.lock:
                self.started.add(i)
            try:
                deadline = time.monotonic() + (0.0 if i == 0 else 30.0)
                while time.monotonic() < deadline:
                    time.sleep(0.005)
                    check_cancelled()
                return i
            finally:
                with self.lock:
                    self.ended.add(i)

        return task


def make_iterator(journal: Journal, api: str, kind: str) -> Any:
    make = journal.io_task if kind == "io" else journal.blocking_task
    if api == "as_completed":
        return as_completed([make(i) for i in range(8)], kind=kind, limit=2)

    if kind == "io":

        async def run_io(i: int) -> Any:
            return await journal.io_task(i)()

        return amap(run_io, range(8), limit=2, ordered=False)

    def run(i: int) -> Any:
        return journal.blocking_task(i)()

    return amap(run, range(8), kind=kind, limit=2, ordered=False)


async def assert_all_stopped(journal: Journal) -> None:
    started, ended = journal.snapshot()
    assert started == ended, f"still running: {started - ended}"
    await anyio.sleep(0.2)  # nothing starts afterwards either
    assert journal.snapshot() == (started, ended)
    assert len(started) < 8


API_AND_KIND = pytest.mark.parametrize(
    ("api", "kind"),
    [(a, k) for a in ("as_completed", "amap") for k in ("io", "blocking")],
)


@API_AND_KIND
async def test_leaving_async_with_by_break_stops_everything_before_the_block_exits(
    api: str, kind: str
) -> None:
    journal = Journal()
    async with make_iterator(journal, api, kind) as results:
        async for _ in results:
            break
    await assert_all_stopped(journal)


@API_AND_KIND
async def test_leaving_async_with_by_an_exception_stops_everything_first(
    api: str, kind: str
) -> None:
    journal = Journal()
    with pytest.raises(LookupError):
        async with make_iterator(journal, api, kind) as results:
            async for _ in results:
                raise LookupError("from the loop body")
    await assert_all_stopped(journal)


@API_AND_KIND
async def test_leaving_async_with_by_cancellation_stops_everything_first(
    api: str, kind: str
) -> None:
    journal = Journal()
    with anyio.move_on_after(0.3):
        async with make_iterator(journal, api, kind) as results:
            async for _ in results:
                await anyio.sleep(30)  # cancelled in the loop body, not while waiting
    await assert_all_stopped(journal)


@API_AND_KIND
async def test_without_the_block_aclose_stops_everything(api: str, kind: str) -> None:
    journal = Journal()
    results = make_iterator(journal, api, kind)
    async for _ in results:
        break
    await results.aclose()
    await assert_all_stopped(journal)
    with pytest.raises(StopAsyncIteration):
        await results.__anext__()


@API_AND_KIND
async def test_without_the_block_a_collected_iterator_stops_its_work(api: str, kind: str) -> None:
    journal = Journal()
    results = make_iterator(journal, api, kind)
    async for _ in results:
        break
    del results
    gc.collect()
    with anyio.fail_after(10):
        while True:
            started, ended = journal.snapshot()
            if started == ended:
                break
            await anyio.sleep(0.01)
    await assert_all_stopped(journal)


async def test_without_the_block_a_cancelled_wait_stops_everything() -> None:
    journal = Journal()
    results = as_completed(
        [journal.blocking_task(i) for i in range(1, 9)], kind="blocking", limit=2
    )
    with anyio.move_on_after(0.2):
        async for _ in results:
            pass
    await assert_all_stopped(journal)


async def test_without_the_block_a_failure_ends_the_loop_and_stops_everything() -> None:
    journal = Journal()

    async def boom() -> None:
        raise KeyError("boom")

    tasks = [boom, *(journal.io_task(i) for i in range(1, 8))]
    results = as_completed(tasks, limit=3)
    with pytest.raises(KeyError):
        async for _ in results:
            pass
    await assert_all_stopped(journal)


async def test_without_the_block_break_alone_keeps_the_work_going() -> None:
    """What the docs say: a ``break`` out of a loop whose iterator is still referenced
    stops nothing by itself (nothing can tell the iterator); closing it does."""
    journal = Journal()
    results = as_completed([call(anyio.sleep, 0), *(journal.io_task(i) for i in range(1, 4))])
    async for _ in results:
        break
    wait_started = time.monotonic()
    while len(journal.snapshot()[0]) < 3 and time.monotonic() - wait_started < 10:
        await anyio.sleep(0.01)
    assert journal.snapshot()[0] == {1, 2, 3}
    await results.aclose()
    assert wait_for(lambda: journal.snapshot()[0] == journal.snapshot()[1], 5)
