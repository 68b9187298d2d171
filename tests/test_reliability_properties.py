"""Property tests (hypothesis): random batches on every lane, on asyncio and trio.

Each example is a batch mixing successes, exceptions, slow tasks, timeouts and (cpu)
crashes, consumed one of three ways: collected with ``return_exceptions=True``,
failing fast, or cancelled from outside after a random delay. Whatever happens:

* every index is accounted for exactly once: a result, its own exception,
  ``TaskTimeout``, ``WorkerCrashed``, or (cancelled/failed fast) not delivered; no
  task ever starts twice, and no started task is still running when the call returns;
* neither the call's ``limit`` nor the lane's capacity is ever exceeded (measured
  inside the tasks);
* ``Scheduler.stats()`` adds up to what happened.

Real threads and processes, a fresh ``Scheduler`` per example, closed after it.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tasklanes import Scheduler, TaskTimeout, WorkerCrashed, call

from . import _reliability_tasks as T
from ._helpers import pid_running

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module", autouse=True)
def _warm_forkserver() -> None:
    T.warm_forkserver()

BACKENDS = [pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")]
TIMEOUT = 0.5  # per task; a "hang" task sleeps far longer, "slow" ones far shorter
HANG = 20.0
HUNG = 15.0  # no example takes near this long; a batch that does has hung
ACTIONS = {
    "io": ["ok", "ok", "slow", "raise", "hang"],
    "blocking": ["ok", "ok", "slow", "raise", "hang"],
    "cpu": ["ok", "ok", "slow", "raise", "hang", "crash"],
}
MAX_HANGS = {"io": 3, "blocking": 2, "cpu": 1}
# Examples per (lane, backend, mode): every mode gets its share whatever the seed.
EXAMPLES = {"io": 8, "blocking": 6, "cpu": 6}
MODES = ["collect", "fail_fast", "cancel"]


@dataclass
class Plan:
    actions: list[str]
    slow: list[float]
    limit: int
    capacity: int
    cancel_after: float
    via_iterator: bool  # cancel mode: cancel an as_completed loop, or a run_all call
    mode: str = "collect"  # "collect" | "fail_fast" | "cancel": a test parameter


@st.composite
def plans(draw: st.DrawFn, kind: str) -> Plan:
    actions = draw(st.lists(st.sampled_from(ACTIONS[kind]), min_size=1, max_size=12))
    hangs = 0
    for i, a in enumerate(actions):  # bound the run time: only a few overrunning tasks
        if a == "hang":
            hangs += 1
            if hangs > MAX_HANGS[kind]:
                actions[i] = "ok"
    slow = [draw(st.floats(0.005, 0.05)) for _ in actions]
    return Plan(
        actions=actions,
        slow=slow,
        limit=draw(st.integers(1, 4)),
        capacity=draw(st.integers(1, 2 if kind == "cpu" else 3)),
        cancel_after=draw(st.sampled_from([0.0, 0.01, 0.05, 0.15, 0.3])),
        via_iterator=draw(st.booleans()),
    )


# ------------------------------------------------------------------ in-process recorder


@dataclass
class Recorder:
    """What io and blocking tasks report about themselves (a threading lock makes it
    safe for both; io tasks never contend on it)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    starts: dict[int, int] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    running: int = 0
    max_running: int = 0

    def start(self, i: int) -> None:
        with self.lock:
            self.starts[i] = self.starts.get(i, 0) + 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def end(self, i: int) -> None:
        with self.lock:
            self.running -= 1
            self.ended.add(i)


async def io_probe(rec: Recorder, i: int, action: str, arg: float) -> int:
    rec.start(i)
    try:
        if action == "slow":
            await anyio.sleep(arg)
        elif action == "hang":
            await anyio.sleep(HANG)
        elif action == "raise":
            await anyio.sleep(0)
            raise ValueError(f"boom {i}")
        else:
            await anyio.sleep(0)
        return i * 10
    finally:
        rec.end(i)


def blocking_probe(rec: Recorder, i: int, action: str, arg: float) -> int:
    rec.start(i)
    try:
        if action == "slow":
            time.sleep(arg)
        elif action == "hang":
            T.cooperative_sleep(HANG)  # stops at check_cancelled() once timed out
        elif action == "raise":
            raise ValueError(f"boom {i}")
        return i * 10
    finally:
        rec.end(i)


# ------------------------------------------------------------------ checks


def check_outcome(kind: str, plan: Plan, i: int, value: Any) -> None:
    action = plan.actions[i]
    if action in ("ok", "slow"):
        assert value == i * 10, (i, action, value)
    elif action == "raise":
        assert type(value) is ValueError and str(value) == f"boom {i}", (i, value)
        assert any(f"task {i}" in n for n in getattr(value, "__notes__", ())), value
    elif action == "hang":
        assert type(value) is TaskTimeout and value.index == i, (i, value)
    elif action == "crash":
        assert type(value) is WorkerCrashed and value.index == i, (i, value)
        assert value.exitcode == 7, value
    else:  # pragma: no cover
        raise AssertionError(action)


def expected_counts(plan: Plan, indexes: Any) -> dict[str, int]:
    counts = dict.fromkeys(("completed", "failed", "timed_out", "crashed"), 0)
    for i in indexes:
        a = plan.actions[i]
        key = {"ok": "completed", "slow": "completed", "raise": "failed",
               "hang": "timed_out", "crash": "crashed"}[a]
        counts[key] += 1
    return counts


async def drive(kind: str, plan: Plan, sched: Scheduler, tasks: list[Any]) -> dict[str, Any]:
    """Run the batch as ``plan.mode`` says; return what the caller saw.

    A batch that hangs fails the example (after ``HUNG`` seconds) instead of the run.
    """
    try:
        with anyio.fail_after(HUNG):
            return await _drive(kind, plan, sched, tasks)
    except TimeoutError as exc:
        if isinstance(exc, TaskTimeout):
            raise
        raise AssertionError(f"the batch hung: {plan}") from None


async def _drive(kind: str, plan: Plan, sched: Scheduler, tasks: list[Any]) -> dict[str, Any]:
    n = len(tasks)
    seen: dict[str, Any] = {"delivered": {}, "raised": None, "cancelled": False}
    if plan.mode == "collect":
        results = await sched.run_all(
            tasks, kind, limit=plan.limit, timeout=TIMEOUT, return_exceptions=True
        )
        assert len(results) == n
        seen["delivered"] = dict(enumerate(results))
    elif plan.mode == "fail_fast":
        try:
            results = await sched.run_all(tasks, kind, limit=plan.limit, timeout=TIMEOUT)
        except Exception as exc:
            seen["raised"] = exc
        else:
            assert len(results) == n
            seen["delivered"] = dict(enumerate(results))
    elif not plan.via_iterator:
        with anyio.move_on_after(plan.cancel_after) as scope:
            results = await sched.run_all(
                tasks, kind, limit=plan.limit, timeout=TIMEOUT, return_exceptions=True
            )
            assert len(results) == n
            seen["delivered"] = dict(enumerate(results))
        seen["cancelled"] = scope.cancelled_caught
    else:
        delivered: dict[int, Any] = seen["delivered"]
        with anyio.move_on_after(plan.cancel_after) as scope:
            async with sched.as_completed(
                tasks, kind, limit=plan.limit, timeout=TIMEOUT, return_exceptions=True
            ) as results:
                async for index, value in results:
                    assert index not in delivered, f"index {index} delivered twice"
                    delivered[index] = value
        seen["cancelled"] = scope.cancelled_caught
    return seen


def check_batch(
    kind: str,
    plan: Plan,
    seen: dict[str, Any],
    starts: dict[int, int],
    still_running: set[int],
    max_concurrency: int,
    stats: Any,
) -> None:
    n = len(plan.actions)
    # What the examples covered (pytest --hypothesis-show-statistics).
    event(f"mode {plan.mode}")
    for action in sorted(set(plan.actions)):
        event(f"has {action}")
    event("raised" if seen["raised"] is not None else "cancelled" if seen["cancelled"] else "whole")
    bound = min(plan.limit, plan.capacity)
    assert max_concurrency <= bound, (
        f"{max_concurrency} tasks ran at once; limit {plan.limit}, capacity {plan.capacity}"
    )
    dups = {i: c for i, c in starts.items() if c > 1}
    assert not dups, f"tasks started more than once: {dups}"
    assert not still_running, f"tasks still running after the call returned: {still_running}"
    assert stats.running == 0 and stats.waiting == 0, stats

    delivered: dict[int, Any] = seen["delivered"]
    for i, value in delivered.items():
        check_outcome(kind, plan, i, value)
        assert i in starts, f"task {i} has an outcome but never started"
    complete = len(delivered) == n
    if plan.mode == "fail_fast" and seen["raised"] is not None:
        exc = seen["raised"]
        culprits = [i for i in range(n) if any(f"task {i} " in x for x in getattr(exc, "__notes__", ()))]
        assert len(culprits) == 1, (exc, getattr(exc, "__notes__", None))
        check_outcome(kind, plan, culprits[0], exc)
        assert plan.actions[culprits[0]] in ("raise", "hang", "crash")
        assert stats.failed + stats.timed_out + stats.crashed >= 1, stats
        assert stats.completed + stats.failed + stats.timed_out + stats.crashed + stats.cancelled <= n
        assert stats.completed + stats.failed + stats.timed_out + stats.crashed + stats.cancelled >= len(starts)
        return
    if plan.mode == "fail_fast":
        assert all(a in ("ok", "slow") for a in plan.actions), "a failure was not raised"
    if complete and not seen["cancelled"]:
        # Nothing was lost: every task ran once and the figures say exactly that.
        assert set(starts) == set(range(n)), "a task never started"
        want = expected_counts(plan, range(n))
        got = {k: getattr(stats, k) for k in want}
        assert got == want, (got, want)
        assert stats.cancelled == 0, stats
        return
    # Cancelled from outside: what was delivered is counted; the rest was dropped or
    # stopped, and counted as cancelled unless it finished before the cancellation.
    want = expected_counts(plan, delivered)
    for key, value in want.items():
        assert getattr(stats, key) >= value, (key, stats, want)
    total = stats.completed + stats.failed + stats.timed_out + stats.crashed + stats.cancelled
    # (Tasks never pulled from the input are in no counter: a batch cancelled before
    # its lane pulled anything shows zeros.)
    assert len(starts) <= total <= n, (stats, len(starts), n)


# ------------------------------------------------------------------ the properties

# Reproducible in CI: the same examples on every run, no example database on disk.
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_in_process_lane(kind: str, plan: Plan, backend: str) -> None:
    rec = Recorder()
    probe = io_probe if kind == "io" else blocking_probe
    tasks = [call(probe, rec, i, a, plan.slow[i]) for i, a in enumerate(plan.actions)]
    caps = {"io_limit": plan.capacity} if kind == "io" else {"blocking_limit": plan.capacity}
    with Scheduler(**caps) as sched:  # type: ignore[arg-type]
        seen = anyio.run(drive, kind, plan, sched, tasks, backend=backend)
        with rec.lock:
            still = set(rec.starts) - rec.ended
            starts = dict(rec.starts)
        check_batch(kind, plan, seen, starts, still, rec.max_running, sched.stats()[kind])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES["io"], **SETTINGS)  # type: ignore[arg-type]
@given(plan=plans("io"))
def test_io_batches(backend: str, mode: str, plan: Plan) -> None:
    plan = replace(plan, mode=mode)
    run_in_process_lane("io", plan, backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES["blocking"], **SETTINGS)  # type: ignore[arg-type]
@given(plan=plans("blocking"))
def test_blocking_batches(backend: str, mode: str, plan: Plan) -> None:
    plan = replace(plan, mode=mode)
    run_in_process_lane("blocking", plan, backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES["cpu"], **SETTINGS)  # type: ignore[arg-type]
@given(plan=plans("cpu"))
def test_cpu_batches(backend: str, mode: str, plan: Plan) -> None:
    plan = replace(plan, mode=mode)
    with tempfile.TemporaryDirectory(prefix="tl-prop-") as tmp:
        d = Path(tmp)
        tasks = [
            call(T.probe, tmp, i, a, HANG if a == "hang" else plan.slow[i])
            for i, a in enumerate(plan.actions)
        ]
        with Scheduler(cpu_limit=plan.capacity) as sched:
            seen = anyio.run(drive, "cpu", plan, sched, tasks, backend=backend)
            stats = sched.stats()["cpu"]
            starts_pid = T.started(d)
            dup = T.prefixed(d, "dup-")
            ended = T.prefixed(d, "end-")
            # A started task is over when it left its body, or when its process is dead
            # (killed for a timeout or a cancellation, or crashed).
            still = {
                i for i, pid in starts_pid.items() if i not in ended and pid_running(pid)
            }
            conc = T.prefixed(d, "conc-")
        starts = {i: 1 + (i in dup) for i in starts_pid}
        max_conc = max((int(v) for v in conc.values()), default=0)
        check_batch("cpu", plan, seen, starts, still, max_conc, stats)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["io", "blocking", "cpu"])
@pytest.mark.parametrize("empty", [[], (), "generator", "async"])
def test_empty_batch(kind: str, empty: Any, backend: str) -> None:
    """An empty batch returns ``[]`` at once on every lane, whatever the input form."""

    async def agen() -> Any:
        return
        yield  # pragma: no cover

    async def main(sched: Scheduler) -> None:
        tasks: Any = (
            iter([]) if empty == "generator" else agen() if empty == "async" else empty
        )
        with anyio.fail_after(5):
            assert await sched.run_all(tasks, kind) == []
        stats = sched.stats()[kind]
        assert stats.completed == stats.cancelled == stats.running == 0

    with Scheduler(cpu_limit=1) as sched:
        anyio.run(main, sched, backend=backend)


def test_properties_are_bounded() -> None:
    """The strategies above stay small enough for CI (a sanity check on the knobs)."""
    assert TIMEOUT * MAX_HANGS["cpu"] * EXAMPLES["cpu"] * len(MODES) < 20
    assert not math.isnan(TIMEOUT)
