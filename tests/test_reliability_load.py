"""Load: 50 concurrent ``run_all`` calls from 4 event loops in 4 threads, sharing one
Scheduler, mixing io, blocking and cpu. Capacities and per-call limits are never
exceeded (measured inside the tasks), every result is right, the stats add up."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasklanes import Scheduler, call

from . import _reliability_tasks as T

pytestmark = [pytest.mark.timeout(90)]

CALLS = 50
LOOPS = 4
TASKS_PER_CALL = 8
CAPS = {"io": 4, "blocking": 3, "cpu": 2}

LOOP_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("asyncio", {}),
    ("trio", {}),
    ("asyncio", {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}),
    ("trio", {}),
]


@pytest.fixture(scope="module", autouse=True)
def _warm_forkserver() -> None:
    T.warm_forkserver()


class Meter:
    """A thread-safe running/max counter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def diagnose(sched: Scheduler, pending: dict[int, str]) -> str:
    """What the lanes look like when calls hang (private state: for the bug report)."""
    lines = [f"pending calls {pending}", f"stats {sched.stats()}"]
    blocking = sched._lanes.get("blocking")  # type: ignore[attr-defined]
    if blocking is not None:
        pool = blocking._resource
        jobs = [run.job for run in blocking.runs()]
        lines.append(
            f"blocking: pool queue {len(pool._jobs) if pool else None}, idle "
            f"{pool._idle if pool else None}, threads {pool.threads if pool else None}, jobs "
            + str([(len(j.ready), len(j.running), j.serving, j.cancelled) for j in jobs])
        )
    cpu = sched._lanes.get("cpu")  # type: ignore[attr-defined]
    if cpu is not None:
        lines.append(f"cpu pool {cpu.pool_stats()}")
        lines.append(
            "cpu jobs "
            + str(
                [
                    (j.unfinished, j.running, len(j._queue))
                    for j in (run.job for run in cpu.runs())
                    if j is not None
                ]
            )
        )
    return "\n".join(lines)


def test_fifty_calls_four_loops_one_scheduler() -> None:
    blocking_total = Meter()
    io_per_loop: dict[int, Meter] = defaultdict(Meter)
    per_call: dict[int, Meter] = defaultdict(Meter)
    limits: dict[int, int] = {}
    errors: list[BaseException] = []
    results: dict[int, list[Any]] = {}
    pending: dict[int, str] = {}

    async def io_task(loop_id: int, call_id: int, i: int) -> tuple[int, int]:
        io_per_loop[loop_id].enter()
        per_call[call_id].enter()
        try:
            await anyio.sleep(0.005 * (1 + i % 3))
            return (call_id, i)
        finally:
            per_call[call_id].leave()
            io_per_loop[loop_id].leave()

    def blocking_task(call_id: int, i: int) -> tuple[int, int]:
        blocking_total.enter()
        per_call[call_id].enter()
        try:
            time.sleep(0.004 * (1 + i % 3))
            return (call_id, i)
        finally:
            per_call[call_id].leave()
            blocking_total.leave()

    def kind_of(call_id: int) -> str:
        return ("io", "blocking", "cpu")[call_id % 3]

    with tempfile.TemporaryDirectory(prefix="tl-load-") as d, Scheduler(
        io_limit=CAPS["io"], blocking_limit=CAPS["blocking"], cpu_limit=CAPS["cpu"]
    ) as sched:

        async def one_call(loop_id: int, call_id: int) -> None:
            kind = kind_of(call_id)
            limit = 1 + call_id % 3
            limits[call_id] = limit
            n = TASKS_PER_CALL
            if kind == "io":
                tasks: list[Any] = [call(io_task, loop_id, call_id, i) for i in range(n)]
            elif kind == "blocking":
                tasks = [call(blocking_task, call_id, i) for i in range(n)]
            else:
                tasks = [call(T.load_cpu, d, call_id, i, 0.01) for i in range(n)]
            pending[call_id] = kind
            results[call_id] = await sched.run_all(tasks, kind, limit=limit)
            del pending[call_id]

        async def loop_main(loop_id: int) -> None:
            async with anyio.create_task_group() as tg:
                for call_id in range(loop_id, CALLS, LOOPS):
                    tg.start_soon(one_call, loop_id, call_id)

        def thread_main(loop_id: int) -> None:
            backend, options = LOOP_KINDS[loop_id]
            try:
                anyio.run(loop_main, loop_id, backend=backend, backend_options=options)
            except BaseException as exc:  # reported below
                errors.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(LOOPS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, t0 + 30 - time.monotonic()))
        elapsed = time.monotonic() - t0
        if any(t.is_alive() for t in threads):
            raise AssertionError(f"calls hung: {diagnose(sched, pending)}")
        assert not errors, errors
        stats = sched.stats()
        conc = {
            name[5:]: (Path(d) / name).read_text()
            for name in os.listdir(d)
            if name.startswith("conc-") and ".tmp" not in name
        }

    # Every call got every result, in order.
    assert sorted(results) == list(range(CALLS))
    for call_id, got in results.items():
        assert got == [(call_id, i) for i in range(TASKS_PER_CALL)], call_id
    # Capacities: blocking across the process, io per loop, cpu across the process.
    assert blocking_total.max <= CAPS["blocking"], blocking_total.max
    assert blocking_total.max >= 2  # the lane was actually shared
    for loop_id, meter in io_per_loop.items():
        assert meter.max <= CAPS["io"], (loop_id, meter.max)
    cpu_tasks = sum(TASKS_PER_CALL for c in range(CALLS) if kind_of(c) == "cpu")
    assert len(conc) == cpu_tasks
    cpu_total = max(int(v.split()[0]) for v in conc.values())
    assert cpu_total <= CAPS["cpu"], cpu_total
    # Per-call limits (io and blocking measured in-process, cpu from the markers).
    for call_id, meter in per_call.items():
        assert meter.max <= limits[call_id], (call_id, meter.max, limits[call_id])
    for key, value in conc.items():
        call_id = int(key.split("_")[0])
        assert int(value.split()[1]) <= limits[call_id], (key, value, limits[call_id])
    # Stats: every task of every lane completed, nothing else happened.
    per_kind = {k: sum(TASKS_PER_CALL for c in range(CALLS) if kind_of(c) == k) for k in CAPS}
    for kind, snap in stats.items():
        assert snap.completed == per_kind[kind], (kind, snap)
        assert (snap.failed, snap.timed_out, snap.cancelled, snap.crashed) == (0, 0, 0, 0), snap
        assert (snap.running, snap.waiting) == (0, 0), snap
        assert snap.capacity == CAPS[kind]
    print(f"load: {CALLS} calls on {LOOPS} loops in {elapsed:.2f} s")


@pytest.mark.timeout(60)
def test_amap_ordered_repeatedly() -> None:
    """The same small ordered amap, again and again, on one scheduler: each must finish."""

    async def main(sched: Scheduler) -> None:
        for r in range(150):
            with anyio.move_on_after(3) as scope:
                out = [x async for x in sched.amap(T.square, range(100), "cpu", limit=2)]
            assert not scope.cancelled_caught, f"amap hung at repeat {r}: {sched.stats()['cpu']}"
            assert out == [i * i for i in range(100)]
        assert sched.stats()["cpu"].cancelled == 0, sched.stats()["cpu"]

    with Scheduler(cpu_limit=2) as sched:
        anyio.run(main, sched)
