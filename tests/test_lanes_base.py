"""The shared lane runner (tasklanes/_lanes/_base.py): deadline heap, outcome
classification, the pull loop, the lane lifecycle; and io-lane timing on trio's
MockClock, where virtual time makes it exact."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, run_all
from tasklanes._backend import LoopHandle
from tasklanes._batch import Batch
from tasklanes._lanes._base import (
    Deadlines,
    LaneBase,
    LaneState,
    Outcome,
    classify,
    count,
    pull,
    watch,
)
from tasklanes._stats import Tally
from tasklanes._tasks import Source

trio = pytest.importorskip("trio")
from trio.testing import MockClock  # noqa: E402

# -- Deadlines -------------------------------------------------------------------


def test_deadlines_expire_soonest_first_whatever_the_insertion_order() -> None:
    d: Deadlines[str] = Deadlines()
    for deadline, key in [(5.0, "e"), (1.0, "a"), (3.0, "c"), (2.0, "b"), (4.0, "d")]:
        d.add(deadline, key)
    assert d.next_deadline() == 1.0
    assert d.expired(0.5) == []
    assert d.expired(3.0) == ["a", "b", "c"]
    assert d.next_deadline() == 4.0
    assert d.expired(math.inf) == ["d", "e"]
    assert d.next_deadline() == math.inf
    assert len(d) == 0


def test_removed_and_replaced_deadlines_never_fire() -> None:
    d: Deadlines[str] = Deadlines()
    d.add(1.0, "done")
    d.add(2.0, "moved")
    d.remove("done")
    d.add(10.0, "moved")  # the same key, a new deadline: the old one is stale
    assert d.next_deadline() == 10.0
    assert d.expired(5.0) == []
    assert d.expired(10.0) == ["moved"]


def test_stale_entries_are_pruned_so_the_heap_stays_small() -> None:
    d: Deadlines[int] = Deadlines()
    for i in range(10_000):  # one worker key, a deadline per task, as the io lane does
        d.add(float(i), 0)
        d.remove(0)
    assert len(d) == 0
    assert len(d._heap) <= 2 * len(d) + 65


def test_watch_sleeps_until_the_next_deadline_without_scanning() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        d: Deadlines[str] = Deadlines()
        clock = trio.current_time
        start = clock()
        wakeups = 0

        def before() -> None:
            nonlocal wakeups
            wakeups += 1

        d.add(start + 3.0, "three")
        d.add(start + 1.0, "one")
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                watch, d, lambda k: fired.append((k, clock() - start)), clock, 10.0, before
            )
            await anyio.sleep(5.0)
            tg.cancel_scope.cancel()
        # Woken at 0, 1 and 3 (and at 5 + a bit, by the cancellation): no polling.
        assert wakeups == 3

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert fired == [("one", 1.0), ("three", 3.0)]


# -- classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ok", "value", "outcome"),
    [
        (True, 1, Outcome.COMPLETED),
        (True, ValueError("returned, not raised"), Outcome.COMPLETED),
        (False, ValueError("x"), Outcome.FAILED),
        (False, TaskTimeout(3, 1.0), Outcome.TIMED_OUT),
        (False, WorkerCrashed(3, -9), Outcome.CRASHED),
        (False, TimeoutError("a user's own timeout"), Outcome.FAILED),
    ],
)
def test_classify(ok: bool, value: object, outcome: Outcome) -> None:
    assert classify(ok, value) is outcome


def test_count_adds_to_the_right_counter() -> None:
    tally = Tally()
    for outcome in Outcome:
        count(tally, outcome, 2)
    count(tally, Outcome.FAILED)
    assert (tally.completed, tally.failed, tally.timed_out, tally.cancelled, tally.crashed) == (
        2,
        3,
        2,
        2,
        2,
    )


# -- pull ------------------------------------------------------------------------------


def _batch(tasks: Any, limit: int = 4) -> Batch:
    def emit(index: int, ok: bool, value: Any) -> None:
        pass

    return Batch(Source(tasks, lambda task, index: None), limit, None, emit, LoopHandle())


@pytest.mark.anyio
async def test_pull_takes_lazy_input_in_bulk_with_consecutive_indexes() -> None:
    batch = _batch(iter(range(10)))
    assert await pull(batch, 4) == (0, [0, 1, 2, 3])
    assert await pull(batch, 100) == (4, [4, 5, 6, 7, 8, 9])
    assert await pull(batch, 4) == (10, [])
    assert batch.source.exhausted


@pytest.mark.anyio
async def test_pull_waits_for_an_async_input_only_when_it_has_nothing() -> None:
    async def agen() -> Any:
        for i in range(3):
            await anyio.sleep(0)
            yield i

    batch = _batch(agen())
    assert await pull(batch, 10) == (0, [0])  # one awaited task, then hand it over
    assert await pull(batch, 10) == (1, [1])
    assert await pull(batch, 10) == (2, [2])
    assert await pull(batch, 10) == (3, [])


@pytest.mark.anyio
async def test_pull_never_waits_for_the_gate_while_outcomes_are_owed() -> None:
    batch = _batch(iter(range(10)))
    open_until = 2
    batch.source.set_gate(lambda index: index < open_until)
    assert await pull(batch, 10) == (0, [0, 1])
    with anyio.fail_after(5):
        assert await pull(batch, 10, owed=True) == (2, [])  # returns: outcomes first
    open_until = 5
    assert await pull(batch, 10, owed=True) == (2, [2, 3, 4])


@pytest.mark.anyio
async def test_an_input_that_raises_fails_the_batch() -> None:
    def tasks() -> Iterator[int]:
        yield 1
        raise OSError("the input broke")

    batch = _batch(tasks())
    assert await pull(batch, 10) == (0, [1])  # what came before the error still counts
    assert isinstance(batch.error, OSError)
    assert batch.stopping


# -- lifecycle ----------------------------------------------------------------------


def test_a_closed_lane_refuses_runs_and_never_builds_its_pool() -> None:
    made: list[object] = []
    closed: list[tuple[list[Any], Any]] = []

    class Lane(LaneBase):
        def shutdown(self, runs: list[Any], resource: Any) -> None:
            closed.append((runs, resource))

    lane = Lane()
    lane.open_run("batch-1")
    pool = lane.resource(lambda: made.append(1) or "pool")
    assert lane.resource(lambda: made.append(2) or "other") == pool == "pool"
    lane.close()
    lane.close()  # idempotent: shutdown runs once
    assert lane.state is LaneState.CLOSED
    assert closed == [(["batch-1"], "pool")]
    with pytest.raises(RuntimeError, match="closed"):
        lane.open_run("batch-2")
    with pytest.raises(RuntimeError, match="closed"):
        lane.resource(lambda: made.append(3) or "late")
    assert made == [1]


# -- the io lane on virtual time ---------------------------------------------------


def _on_mock_clock(main: Any) -> Any:
    return anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )


def test_io_timeouts_fire_exactly_at_their_deadline_on_virtual_time() -> None:
    async def sleeper(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    async def main() -> tuple[list[Any], float]:
        start = trio.current_time()
        with Scheduler() as sched:
            results = await sched.run_all(
                [sleeper(s) for s in (1.0, 10.0, 2.0, 10.0, 4.9)],
                limit=2,
                timeout=5.0,
                return_exceptions=True,
            )
        return results, trio.current_time() - start

    results, took = _on_mock_clock(main)
    assert results[0] == 1.0 and results[2] == 2.0 and results[4] == 4.9
    assert isinstance(results[1], TaskTimeout) and results[1].index == 1
    assert isinstance(results[3], TaskTimeout) and results[3].index == 3
    # 2 at a time: [0] 0-1, [1] 0-5 (timeout), [2] 1-3, [3] 3-8 (timeout), [4] 5-9.9.
    assert took == pytest.approx(9.9)


def test_io_limit_paces_a_batch_exactly_on_virtual_time() -> None:
    async def main() -> float:
        start = trio.current_time()
        await run_all([anyio.sleep(1.0) for _ in range(10)], limit=3)
        return trio.current_time() - start

    assert _on_mock_clock(main) == pytest.approx(4.0)  # ceil(10 / 3) rounds of 1 s
