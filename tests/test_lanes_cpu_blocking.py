"""``run_all_sync(kind="cpu")`` on a list, without an event loop (`ProcessLane.run_blocking`).

The same outcomes, errors, timeouts, crashes and figures as the loop path; these tests
run from sync code (no loop), where a list input takes this path. Ctrl-C during it is
tests/test_reliability_interrupts.py's ``cpu`` mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, call

from . import _pool_tasks as P
from . import _tasks as T
from ._helpers import run_json_script

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def sched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scheduler]:
    # Proof that the batches below take the loop-free path: the loop path would
    # start an event loop through `_backend.run_sync`.
    from tasklanes import _backend

    def no_loop(*args: object) -> None:
        raise AssertionError("run_all_sync started an event loop")

    monkeypatch.setattr(_backend, "run_sync", no_loop)
    with Scheduler(cpu_limit=2) as s:
        yield s


def test_a_script_runs_a_cpu_list_without_importing_an_event_loop(tmp_path: Path) -> None:
    out = run_json_script(
        tmp_path,
        """
            import json, sys
            from tasklanes import call, run_all_sync, get_scheduler


            def square(x):
                return x * x


            if __name__ == "__main__":
                results = run_all_sync([call(square, i) for i in range(20)], kind="cpu")
                loaded = [m for m in ("anyio", "asyncio", "trio") if m in sys.modules]
                completed = get_scheduler().stats()["cpu"]["completed"]
                print(json.dumps({"results": results, "loaded": loaded, "completed": completed}))
            """,
    )
    assert out["results"] == [i * i for i in range(20)]
    assert out["loaded"] == []
    assert out["completed"] == 20


def test_results_in_input_order_and_counted(sched: Scheduler) -> None:
    results = sched.run_all_sync([call(T.double, i) for i in range(500)], kind="cpu")
    assert results == [2 * i for i in range(500)]
    assert sched.run_all_sync((), kind="cpu") == []
    cpu = sched.stats()["cpu"]
    assert cpu["completed"] == 500
    assert cpu["running"] == cpu["waiting"] == 0


def test_the_first_failure_is_raised_as_itself_and_stops_the_rest(sched: Scheduler) -> None:
    tasks = [call(P.sleep_then, 0.2), call(P.raise_custom, "boom")]
    tasks += [call(P.sleep_then, 30, i) for i in range(3)]
    started = time.monotonic()
    with pytest.raises(P.CustomError, match="boom") as info:
        sched.run_all_sync(tasks, kind="cpu")
    assert time.monotonic() - started < 20  # the sleepers were killed, not awaited
    assert "(tasklanes: raised by task 1 of the batch)" in info.value.__notes__
    cpu = sched.stats()["cpu"]
    assert cpu["failed"] == 1
    assert cpu["running"] == 0
    # The pool healed: the next batch runs.
    assert sched.run_all_sync([call(T.double, 4)], kind="cpu") == [8]


def test_return_exceptions_timeouts_and_crashes(sched: Scheduler) -> None:
    tasks = [
        call(T.double, 1),
        call(P.raise_custom, "bad"),
        call(P.sleep_then, 30),
        call(P.exit_now, 3),
        call(T.double, 5),
    ]
    out = sched.run_all_sync(tasks, kind="cpu", timeout=1.0, return_exceptions=True)
    assert out[0] == 2 and out[4] == 10
    assert isinstance(out[1], P.CustomError)
    assert isinstance(out[2], TaskTimeout) and out[2].index == 2
    assert isinstance(out[3], WorkerCrashed) and out[3].index == 3
    cpu = sched.stats()["cpu"]
    assert (cpu["completed"], cpu["failed"], cpu["timed_out"], cpu["crashed"]) == (2, 1, 1, 1)


def test_a_bad_task_fails_before_anything_runs(sched: Scheduler) -> None:
    async def coro() -> None: ...

    with pytest.raises(TypeError, match="task 1"):
        sched.run_all_sync([call(T.double, 1), coro], kind="cpu")
    assert sched.stats()["cpu"]["completed"] == 0


def test_other_inputs_and_options_take_the_loop_path() -> None:
    # A generator, progress, retry: the loop path, with the same results.
    with Scheduler(cpu_limit=2) as s:
        assert s.run_all_sync((call(T.double, i) for i in range(5)), kind="cpu") == [
            0,
            2,
            4,
            6,
            8,
        ]
        seen: list[int] = []
        got = s.run_all_sync(
            [call(T.double, i) for i in range(5)],
            kind="cpu",
            progress=lambda update: seen.append(update.done),
            retry=2,
        )
        assert got == [0, 2, 4, 6, 8]
        assert seen[-1] == 5
