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


# ---------------------------------------------------------------- bulk outcomes and pulls


def _stream(ordered: bool) -> Any:
    from tasklanes._batch import _Stream
    from tasklanes._tasks import Source

    return _Stream(None, Source([], lambda task, index: None), 2, None, False, ordered, None)  # type: ignore[arg-type]


def test_ordered_stream_holds_a_block_that_comes_early_until_its_turn() -> None:
    s = _stream(ordered=True)
    s.emit_ok_many(range(5, 8), [5, 6, 7])  # ahead of the others: held as one block
    assert not s.ready
    s.emit_ok_many(range(0, 3), [0, 1, 2])
    assert [i for i, _, _ in s.ready] == [0, 1, 2]
    s.emit(4, True, 4)
    s.emit(3, True, 3)  # fills the gap: 3, 4 and the held block follow
    s.emit_ok_many([8, 9], [8, 9])  # not a range: one by one
    assert [(i, ok, v) for i, ok, v in s.ready] == [(i, True, i) for i in range(10)]
    assert s.next_index == 10 and not s.reorder


def test_unordered_stream_takes_blocks_as_they_come() -> None:
    s = _stream(ordered=False)
    s.emit_ok_many(range(5, 7), ["a", "b"])
    s.emit(0, True, "c")
    assert list(s.ready) == [(5, True, "a"), (6, True, "b"), (0, True, "c")]


def test_a_bare_stream_buffers_values_alone_in_order() -> None:
    # amap's stream (no index to yield): values only, blocks and single outcomes alike.
    from tasklanes._batch import _Stream
    from tasklanes._tasks import Source

    for ordered in (True, False):
        s = _Stream(None, Source([], lambda task, index: None), 2, None, True, ordered, None, bare=True)  # type: ignore[arg-type]
        s.emit_ok_many(range(2, 4), ["c", "d"])
        s.emit(1, True, "b")
        s.emit_ok_many(range(0, 1), ["a"])
        error = ValueError("e")
        s.emit(4, False, error)  # return_exceptions: a failure is a value too
        s.emit_ok_many([5], ["f"])
        want = ["a", "b", "c", "d", error, "f"] if ordered else ["c", "d", "b", "a", error, "f"]
        assert list(s.ready) == want


def test_a_gate_that_tells_its_room_is_pulled_in_bulk() -> None:
    from tasklanes._tasks import Source

    checked: list[int] = []
    source = Source(iter(range(100)), lambda task, index: checked.append(index))
    asked: list[int] = []
    source.set_gate(lambda index: index < 30, lambda index: asked.append(index) or 30 - index)
    assert source.take(20) == list(range(20))
    assert source.take(20) == list(range(20, 30))  # the gate's room, not 20
    assert source.take(20) == []
    assert asked == [0, 20, 30]  # one question per pull, not one per task
    assert checked == list(range(30))  # every task pulled was checked
    assert not source.exhausted
