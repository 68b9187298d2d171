"""Tests of the process pool engine (``tasklanes._processes._pool``), driven directly
from sync code: real worker processes, no mocks."""

from __future__ import annotations

import collections
import functools
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasklanes._errors import TaskTimeout, WorkerCrashed
from tasklanes._processes._pool import Delivered, PoolJob, ProcessPool, Run, default_context
from tasklanes._processes._protocol import RemoteError

from . import _pool_tasks as T
from ._helpers import pid_exists, wait_for

# A backstop: a hung pool must fail the test, not the whole run.
pytestmark = (
    [pytest.mark.timeout(60)] if importlib.util.find_spec("pytest_timeout") is not None else []
)

P = functools.partial


# ---------------------------------------------------------------- helpers


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, cmdline) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = stat.rpartition(")")[2].split()
        table[int(entry)] = (int(rest[1]), rest[0], cmdline)
    return table


def leftover_processes() -> list[str]:
    """Our descendants, except the forkserver itself (a process-wide singleton that
    multiprocessing keeps until exit); its children (our workers) do count."""
    table = _proc_table()
    found = []
    stack = [os.getpid()]
    while stack:
        parent = stack.pop()
        for pid, (ppid, state, cmdline) in table.items():
            if ppid != parent:
                continue
            stack.append(pid)
            if "forkserver" in cmdline and "main(" in cmdline:
                continue
            if "resource_tracker" in cmdline:
                continue
            found.append(f"{pid} [{state}] {cmdline[:100]}")
    return found


class Collector:
    """Gathers a job's outcomes; checks that no index is delivered twice."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[int, tuple[bool, object]] = {}
        self.arrival: dict[int, float] = {}
        self.deliveries = 0
        self.runs = 0  # `Run` blocks received (a job opened with runs=True)
        self.settled = threading.Event()
        self.first = threading.Event()

    def deliver(self, batch: list[Delivered]) -> None:
        now = time.monotonic()
        with self.lock:
            self.deliveries += 1
            for item in batch:
                if isinstance(item, Run):
                    self.runs += 1
                    outcomes = item.outcomes()
                else:
                    outcomes = [item]
                for index, ok, value in outcomes:
                    assert index not in self.outcomes, f"index {index} delivered twice"
                    self.outcomes[index] = (ok, value)
                    self.arrival[index] = now
        self.first.set()

    def values(self) -> list[object]:
        return [self.outcomes[i][1] for i in sorted(self.outcomes)]


def start(
    pool: ProcessPool,
    tasks: list[Callable[[], object]],
    *,
    limit: int = 2,
    timeout: float | None = None,
    close: bool = True,
    runs: bool = False,
) -> tuple[PoolJob, Collector]:
    c = Collector()
    job = pool.open_job(
        limit=limit, timeout=timeout, deliver=c.deliver, on_settled=c.settled.set, runs=runs
    )
    job.put(0, list(tasks))
    if close:
        job.close_input()
    return job, c


def run(pool: ProcessPool, tasks: list[Callable[[], object]], **kw: object) -> Collector:
    job, c = start(pool, tasks, **kw)  # type: ignore[arg-type]
    assert c.settled.wait(30), "job did not settle"
    assert job.unfinished == 0
    return c


@pytest.fixture(scope="module", autouse=True)
def forkserver_running() -> None:
    """Start the forkserver (and with it multiprocessing's resource tracker, a child
    of ours that lives until exit) before any test, so that leak checks that compare
    child processes before and after a test do not count them."""
    if default_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    yield
    assert wait_for(lambda: not leftover_processes(), 3.0), leftover_processes()
    assert multiprocessing.active_children() == []


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    p = ProcessPool(2)
    try:
        yield p
    finally:
        p.close()


def wait_pid_file(path: Path, timeout: float = 10.0) -> int:
    assert wait_for(path.exists, timeout), "the task never started"
    return int(path.read_text())


# ---------------------------------------------------------------- results


def test_results_correct_and_batched(pool: ProcessPool) -> None:
    c = run(pool, [P(T.inc, i) for i in range(3000)])
    assert c.outcomes == {i: (True, i + 1) for i in range(3000)}
    # Outcomes come in batches, not one callback per task.
    assert c.deliveries < 3000 / 4
    heal(pool)
    assert pool.stats()["started"] == 2


def test_call_objects_and_plain_callables(pool: ProcessPool) -> None:
    from tasklanes._call import Call

    tasks: list[Callable[[], object]] = [Call(T.identity, (i,), {}) for i in range(50)]
    tasks += [Call(T.sleep_then, (0,), {"value": "kw"}), P(T.inc, 1), T.system_exit]
    c = run(pool, tasks)
    assert c.values()[:50] == list(range(50))
    assert c.values()[50:52] == ["kw", 2]
    ok, exc = c.outcomes[52]
    assert not ok
    assert isinstance(exc, SystemExit)
    assert exc.code == 3


def test_jobs_run_concurrently_within_their_limits() -> None:
    pool = ProcessPool(3)
    try:
        _a, ca = start(pool, [P(T.timed_sleep, 0.1) for _ in range(6)], limit=1)
        _b, cb = start(pool, [P(T.timed_sleep, 0.1) for _ in range(6)], limit=2)
        assert ca.settled.wait(20)
        assert cb.settled.wait(20)

        def max_overlap(c: Collector) -> int:
            spans: list[Any] = [v for ok, v in c.outcomes.values() if ok]
            assert len(spans) == 6
            events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
            running = peak = 0
            for _, delta in events:
                running += delta
                peak = max(peak, running)
            return peak

        assert max_overlap(ca) == 1
        assert max_overlap(cb) == 2
        # Both made progress at the same time: job a did not wait for job b.
        a_start = min(v[0] for _, v in ca.outcomes.values())  # type: ignore[index]
        b_end = max(v[1] for _, v in cb.outcomes.values())  # type: ignore[index]
        assert a_start < b_end
    finally:
        pool.close()


def test_put_in_pieces(pool: ProcessPool) -> None:
    c = Collector()
    job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    for base in range(0, 1000, 100):
        job.put(base, [P(T.inc, i) for i in range(base, base + 100)])
        time.sleep(0.002)
    assert not c.settled.is_set()
    job.close_input()
    assert c.settled.wait(20)
    assert c.values() == [i + 1 for i in range(1000)]
    assert job.unfinished == 0


# ---------------------------------------------------------------- chunking


def test_tiny_tasks_are_chunked(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, 0)] * 10)  # warm up the workers
    before = pool.stats()
    c = run(pool, [P(T.inc, i) for i in range(20000)])
    assert c.values() == [i + 1 for i in range(20000)]
    after = pool.stats()
    # "tasks" counts tasks *sent*: the rest of a chunk handed back over its time budget
    # (a busy machine can stall any chunk) is sent again, and counted again.
    sent = after["tasks"] - before["tasks"]
    returned = after["returned"] - before["returned"]
    assert sent >= 20000
    assert returned > 0 or sent == 20000
    assert after["chunks"] - before["chunks"] < 20000 / 50 + 2 * returned


def test_long_tasks_are_not_serialized(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, 0)] * 4)  # warm up: this test times the tasks, not the start
    t0 = time.monotonic()
    c = run(pool, [P(T.sleep_then, 0.2, i) for i in range(8)])
    elapsed = time.monotonic() - t0
    assert c.values() == list(range(8))
    assert elapsed < 1.2


def test_tiny_and_long_jobs_at_once(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, 0)] * 4)
    t0 = time.monotonic()
    _, long = start(pool, [P(T.sleep_then, 0.3, i) for i in range(4)], limit=1)
    _, tiny = start(pool, [P(T.inc, i) for i in range(5000)])
    assert tiny.settled.wait(20)
    assert long.settled.wait(20)
    tiny_done = max(tiny.arrival.values()) - t0
    long_done = max(long.arrival.values()) - t0
    # The tiny tasks ran on the other worker, alongside, not after the long ones...
    assert tiny_done < 0.9, tiny_done
    # ...and the long ones were not starved by the tiny ones.
    assert long_done < 2.0, long_done
    assert tiny.values() == [i + 1 for i in range(5000)]


def test_over_budget_chunk_hands_back_its_rest(pool: ProcessPool) -> None:
    # Tasks of ~0.3 ms make chunks of several tasks; one in the middle sleeps 0.3 s.
    # The rest of its chunk is handed back and runs on the other worker meanwhile.
    tasks: list[Callable[[], object]] = [P(T.spin, 0.0003) for _ in range(3000)]
    tasks[1500] = P(T.sleep_then, 0.3, "long")
    c = run(pool, tasks)
    assert c.outcomes[1500] == (True, "long")
    assert all(ok for ok, _ in c.outcomes.values())
    assert pool.stats()["returned"] >= 1


# ---------------------------------------------------------------- crashes


def heal(pool: ProcessPool, n: int = 2) -> None:
    assert wait_for(lambda: pool.stats()["workers"] == n, 10), pool.stats()
    assert len(pool.worker_pids()) == n


def test_crash_by_exit_costs_one_task(pool: ProcessPool) -> None:
    c = run(pool, [P(T.exit_if, i, 10) for i in range(40)])
    for i in range(40):
        ok, value = c.outcomes[i]
        if i == 10:
            assert not ok
            assert isinstance(value, WorkerCrashed)
            assert value.index == 10
            assert value.exitcode == 1
        else:
            assert (ok, value) == (True, i)
    heal(pool)
    assert pool.stats()["crashed"] == 1
    assert run(pool, [P(T.inc, 1)]).values() == [2]


def test_crash_by_sigkill_from_outside(pool: ProcessPool, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    tasks: list[Callable[[], object]] = [P(T.write_pid_then_sleep, str(path), 30)]
    tasks += [P(T.inc, i) for i in range(1, 200)]
    _, c = start(pool, tasks)
    pid = wait_pid_file(path)
    os.kill(pid, signal.SIGKILL)
    assert c.settled.wait(20)
    ok, value = c.outcomes[0]
    assert not ok
    assert isinstance(value, WorkerCrashed)
    assert value.exitcode == -signal.SIGKILL
    assert value.signal == "SIGKILL"
    assert all(c.outcomes[i] == (True, i + 1) for i in range(1, 200))
    heal(pool)
    assert pid not in pool.worker_pids()


def test_crash_by_segfault(pool: ProcessPool) -> None:
    tasks: list[Callable[[], object]] = [P(T.inc, i) for i in range(30)]
    tasks[7] = T.segfault
    c = run(pool, tasks)
    ok, value = c.outcomes[7]
    assert not ok
    assert isinstance(value, WorkerCrashed)
    assert value.index == 7
    assert value.exitcode == -signal.SIGSEGV
    assert all(c.outcomes[i] == (True, i + 1) for i in range(30) if i != 7)
    heal(pool)


def test_fork_inside_a_task(pool: ProcessPool) -> None:
    c = run(pool, [T.fork_in_task, *[P(T.inc, i) for i in range(1, 20)]])
    assert c.values() == [1, *[i + 1 for i in range(1, 20)]]
    assert pool.stats()["crashed"] == 0


# ---------------------------------------------------------------- timeouts and cancel


def test_timeout_kills_the_worker(pool: ProcessPool, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    tasks: list[Callable[[], object]] = [P(T.write_pid_then_sleep, str(path), 30)]
    tasks += [P(T.inc, i) for i in range(1, 50)]
    _job, c = start(pool, tasks, limit=1, timeout=0.4)
    pid = wait_pid_file(path)
    t0 = time.monotonic()
    assert c.settled.wait(20)
    ok, value = c.outcomes[0]
    assert not ok
    assert isinstance(value, TaskTimeout)
    assert value.index == 0
    assert value.timeout == 0.4
    assert c.arrival[0] - t0 < 0.4 + 0.5
    # The rest of the job ran on the replacement worker.
    assert all(c.outcomes[i] == (True, i + 1) for i in range(1, 50))
    assert wait_for(lambda: not pid_exists(pid), 2.0), "the timed-out worker survived"
    heal(pool)
    stats = pool.stats()
    assert stats["timed_out"] == 1
    assert stats["killed"] == 1


def test_timeout_does_not_touch_quick_tasks(pool: ProcessPool) -> None:
    c = run(pool, [P(T.sleep_then, 0.05, i) for i in range(10)], timeout=1.0)
    assert c.values() == list(range(10))
    assert pool.stats()["killed"] == 0


def test_cancel_kills_its_tasks_only(tmp_path: Path) -> None:
    pool = ProcessPool(3)
    try:
        other_path = tmp_path / "other"
        _, other = start(pool, [P(T.write_pid_then_sleep, str(other_path), 1.0)], limit=1)
        other_pid = wait_pid_file(other_path)
        paths = [tmp_path / f"p{i}" for i in range(2)]
        tasks: list[Callable[[], object]] = [P(T.write_pid_then_sleep, str(p), 30) for p in paths]
        tasks += [P(T.inc, i) for i in range(100)]
        job, c = start(pool, tasks, limit=2, close=False)
        pids = [wait_pid_file(p) for p in paths]
        t0 = time.monotonic()
        job.cancel()
        assert c.settled.wait(5)
        assert time.monotonic() - t0 < 1.0
        assert c.outcomes == {}  # the cancelled tasks get no outcome
        for pid in pids:
            assert not pid_exists(pid)
        # The other job's task ran on, untouched.
        assert other.settled.wait(10)
        assert other.outcomes[0] == (True, other_pid)
        heal(pool, 3)
        assert pool.stats()["killed"] == 2
        # Puts after cancel are ignored.
        job.put(500, [P(T.inc, 1)])
        assert run(pool, [P(T.inc, 1)]).values() == [2]
    finally:
        pool.close()


def test_cancel_before_anything_ran(pool: ProcessPool) -> None:
    job, c = start(pool, [P(T.inc, i) for i in range(10)], close=False)
    job.cancel()
    assert c.settled.wait(5)


# ---------------------------------------------------------------- errors


def test_exception_type_and_remote_traceback(pool: ProcessPool) -> None:
    c = run(pool, [P(T.raise_custom, "boom"), P(T.inc, 1)])
    ok, exc = c.outcomes[0]
    assert not ok
    assert type(exc) is T.CustomError
    assert str(exc) == "boom"
    assert isinstance(exc, BaseException)
    note = "\n".join(exc.__notes__)
    assert "Traceback in worker process (pid " in note
    assert "raise_custom" in note
    assert "raise CustomError(msg)" in note
    assert c.outcomes[1] == (True, 2)


def test_exceptions_that_do_not_pickle(pool: ProcessPool) -> None:
    c = run(pool, [T.raise_needs_two, T.raise_unpicklable])
    for i, name in [(0, "NeedsTwoArgs"), (1, "Unpicklable")]:
        ok, exc = c.outcomes[i]
        assert not ok
        assert isinstance(exc, RemoteError), exc
        assert exc.type_name.endswith(name)
        assert "Traceback in worker process" in exc.__notes__[0]
    assert "1/2" in str(c.outcomes[0][1])


def test_unpicklable_tasks_fail_alone(pool: ProcessPool) -> None:
    tasks: list[Callable[[], object]] = [P(T.identity, i) for i in range(10)]
    tasks[3] = P(T.identity, threading.Lock())
    tasks[7] = P(T.identity, lambda: 1)  # travels by value (cloudpickle), and back
    c = run(pool, tasks)
    for i in range(10):
        ok, value = c.outcomes[i]
        if i == 3:
            assert not ok
            assert type(value) is TypeError
            assert f"task {i} could not be pickled" in str(value)
        elif i == 7:
            assert ok and callable(value) and value() == 1  # type: ignore[operator]
        else:
            assert (ok, value) == (True, i)
    assert "lock" in str(c.outcomes[3][1])


def test_unpicklable_tasks_inside_big_chunks_fail_alone(pool: ProcessPool) -> None:
    # Late in a batch, where chunks hold many tasks: the culprits fail, the rest of
    # their chunk goes back to the queue and runs, each task once.
    n, bad = 3000, {2000, 2001, 2500}
    tasks: list[Callable[[], object]] = [P(T.identity, i) for i in range(n)]
    for i in bad:
        tasks[i] = P(T.identity, threading.Lock())
    c = run(pool, tasks)
    assert sorted(i for i in range(n) if not c.outcomes[i][0]) == sorted(bad)
    assert all(c.outcomes[i] == (True, i) for i in range(n) if i not in bad)
    assert pool.stats()["tasks"] == n - len(bad)  # each sent once


def test_without_cloudpickle_a_lambda_argument_fails_alone_naming_the_extra(
    pool: ProcessPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    tasks: list[Callable[[], object]] = [P(T.identity, i) for i in range(4)]
    tasks[2] = P(T.identity, lambda: 1)
    c = run(pool, tasks)
    assert [c.outcomes[i] for i in (0, 1, 3)] == [(True, 0), (True, 1), (True, 3)]
    ok, value = c.outcomes[2]
    assert not ok and type(value) is TypeError
    assert "task 2 could not be pickled" in str(value)
    assert "pip install 'tasklanes[interactive]'" in str(value)


def test_unpicklable_results_fail_alone(pool: ProcessPool) -> None:
    c = run(pool, [P(T.inc, 0), T.return_lock, P(T.inc, 2), T.return_bad_on_load, P(T.inc, 4)])
    assert [c.outcomes[i] for i in (0, 2, 4)] == [(True, 1), (True, 3), (True, 5)]
    ok, value = c.outcomes[1]
    assert not ok
    assert type(value) is TypeError
    assert "result of task 1 could not be pickled" in str(value)
    ok, value = c.outcomes[3]
    assert not ok
    assert type(value) is TypeError
    assert "result of task 3 could not be unpickled" in str(value)


# ---------------------------------------------------------------- life cycle


def test_close_leaves_no_process(tmp_path: Path) -> None:
    pool = ProcessPool(2)
    run(pool, [P(T.inc, 1)])
    assert wait_for(lambda: len(pool.worker_pids()) == 2)
    pids = pool.worker_pids()
    path = tmp_path / "pid"
    _, c = start(pool, [P(T.write_pid_then_sleep, str(path), 30)])
    wait_pid_file(path)
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 2.0
    assert multiprocessing.active_children() == []
    assert not any(pid_exists(pid) for pid in pids)
    assert pool.stats()["workers"] == 0
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.open_job(limit=1, timeout=None, deliver=c.deliver, on_settled=c.settled.set)


def test_close_before_start_and_lazy_start() -> None:
    pool = ProcessPool(2)
    assert pool.stats()["started"] == 0
    assert leftover_processes() == []
    pool.close()
    pool = ProcessPool(1)
    t0 = time.monotonic()
    c = Collector()
    job = pool.open_job(limit=1, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    assert time.monotonic() - t0 < 0.05  # open_job does not wait for processes
    job.put(0, [P(T.inc, 1)])
    job.close_input()
    assert c.settled.wait(20)
    pool.close()


def test_bad_arguments(pool: ProcessPool) -> None:
    c = Collector()
    with pytest.raises(ValueError, match="limit"):
        pool.open_job(limit=0, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    with pytest.raises(ValueError, match="timeout"):
        pool.open_job(limit=1, timeout=0, deliver=c.deliver, on_settled=c.settled.set)
    with pytest.raises(ValueError, match="max_workers"):
        ProcessPool(0)


# ---------------------------------------------------------------- held outcomes
# Workers hold the outcomes of quick tasks for a moment and send them together; the
# shared slot tells the parent which task runs. These cases put a crash, a timeout
# and a slow task right behind many held outcomes.


def test_crash_behind_held_outcomes_blames_only_the_running_task(pool: ProcessPool) -> None:
    n, bad = 4000, 3333  # late in the batch: chunks are big and outcomes held by then
    c = run(pool, [P(T.exit_if, i, bad) for i in range(n)])
    assert len(c.outcomes) == n
    for i in range(n):
        ok, value = c.outcomes[i]
        if i == bad:
            assert not ok
            assert isinstance(value, WorkerCrashed)
            assert value.index == bad
        else:
            assert (ok, value) == (True, i), i
    assert pool.stats()["crashed"] == 1


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_bare_chunk_crash_in_the_middle_costs_one_task(
    pool: ProcessPool, timeout: float | None
) -> None:
    # One argument per task: chunks travel bare. Untimed, the worker publishes no
    # start per task, and the crash is pinned on the first task without an outcome
    # once the pipe and the journal are read; timed, from the shared slot.
    n, bad = 4000, 3333
    tasks = [P(T.exit_if_negative, -1 if i == bad else i) for i in range(n)]
    c = run(pool, tasks, timeout=timeout, runs=True)
    assert [i for i in range(n) if not c.outcomes[i][0]] == [bad]
    value = c.outcomes[bad][1]
    assert isinstance(value, WorkerCrashed) and value.index == bad
    assert all(c.outcomes[i] == (True, i) for i in range(n) if i != bad)
    assert pool.stats()["crashed"] == 1


def test_bare_chunk_timeout_kills_the_right_task(pool: ProcessPool) -> None:
    n, slow = 4000, 3000
    tasks = [P(T.stall_if_negative, -1 if i == slow else i) for i in range(n)]
    c = run(pool, tasks, timeout=1.0, runs=True)
    assert [i for i in range(n) if not c.outcomes[i][0]] == [slow]
    value = c.outcomes[slow][1]
    assert isinstance(value, TaskTimeout) and value.index == slow
    assert all(c.outcomes[i] == (True, i) for i in range(n) if i != slow)
    assert pool.stats()["timed_out"] == 1


def test_timed_job_after_untimed_ones_times_out_the_right_task(pool: ProcessPool) -> None:
    # Untimed chunks publish no start per task, yet the count of tasks started that
    # a timed chunk publishes afterwards must still line up with the parent's.
    for _ in range(2):
        c = run(pool, [P(T.inc, i) for i in range(3000)])
        assert c.outcomes == {i: (True, i + 1) for i in range(3000)}
        tasks: list[Callable[[], object]] = [P(T.inc, i) for i in range(2000)]
        tasks[1500] = P(T.sleep_then, 30.0, "never")
        c = run(pool, tasks, timeout=1.0)
        assert [i for i in range(2000) if not c.outcomes[i][0]] == [1500]
        assert isinstance(c.outcomes[1500][1], TaskTimeout)
        heal(pool)


def test_a_job_with_runs_gets_bulk_successes_as_blocks(pool: ProcessPool) -> None:
    n = 5000
    c = run(pool, [P(T.inc, i) for i in range(n)], runs=True)
    assert c.runs > 0  # trivial tasks: their outcomes came in bulk
    assert c.outcomes == {i: (True, i + 1) for i in range(n)}


def test_runs_around_a_crash_and_a_timeout(pool: ProcessPool) -> None:
    # The blocks split around a task that crashed its worker and one that timed out;
    # every other task's value arrives exactly once, and the job settles.
    n, bad, slow = 4000, 1500, 3000
    tasks: list[Callable[[], object]] = [P(T.exit_if, i, bad) for i in range(n)]
    tasks[slow] = P(T.sleep_then, 30.0, "never")
    c = run(pool, tasks, runs=True, timeout=1.0)
    assert len(c.outcomes) == n
    assert isinstance(c.outcomes[bad][1], WorkerCrashed)
    assert isinstance(c.outcomes[slow][1], TaskTimeout)
    assert all(c.outcomes[i] == (True, i) for i in range(n) if i not in (bad, slow))


def test_queue_segments_put_in_parts_are_joined_into_chunks(pool: ProcessPool) -> None:
    # A lazy input arrives in small parts with consecutive indexes: the pool joins
    # them into bigger chunks rather than send one chunk per part.
    c = Collector()
    job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    chunks_before = pool.stats()["chunks"]
    for first in range(0, 6000, 3):
        job.put(first, [P(T.inc, i) for i in range(first, first + 3)])
    job.close_input()
    assert c.settled.wait(30)
    assert c.outcomes == {i: (True, i + 1) for i in range(6000)}
    assert pool.stats()["chunks"] - chunks_before < 1000  # far fewer than the 2000 parts


def test_expect_sizes_the_first_chunks_of_a_job(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, i) for i in range(100)])  # both workers up and warm
    assert wait_for(lambda: pool.stats()["workers"] == 2)
    c = Collector()
    job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    job.expect(1e-6)  # a measured duration from an earlier job: trivial tasks
    job.put(0, [P(T.getpid_after, 0.0) for _ in range(4000)])
    job.close_input()
    assert c.settled.wait(30)
    pids = [c.outcomes[i][1] for i in range(4000)]
    # Without the hint the first chunk holds one task, the next goes elsewhere. With
    # it the first chunk is big (2000: half the queue); its worker may still hand the
    # rest back after the chunk's 20 ms budget (each `getpid_after(0.0)` costs a
    # syscall or two), so look only at the first 200 tasks, a few ms of work.
    assert len(set(pids[:200])) == 1


def test_the_tail_is_split_only_once_the_input_has_ended(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, i) for i in range(100)])  # both workers up and warm
    heal(pool)
    c = Collector()
    job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    job.expect(1e-6)  # trivial tasks: full chunks hold 2048
    before = pool.stats()["chunks"]
    # A part of a lazy input, more to come: one full chunk, not split as a tail.
    job.put(0, [P(T.inc, i) for i in range(1000)])
    assert wait_for(lambda: len(c.outcomes) == 1000, 30)
    assert pool.stats()["chunks"] - before == 1
    # The last part: now the queue is the batch's tail, spread over the workers.
    before = pool.stats()["chunks"]
    job.put(1000, [P(T.inc, i) for i in range(1000, 2000)], last=True)
    job.close_input()
    assert c.settled.wait(30)
    assert c.outcomes == {i: (True, i + 1) for i in range(2000)}
    assert pool.stats()["chunks"] - before > 1


def test_last_put_may_be_empty(pool: ProcessPool) -> None:
    c = Collector()
    job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    job.put(0, [P(T.inc, i) for i in range(10)])
    job.put(10, [], last=True)
    job.close_input()
    assert c.settled.wait(30)
    assert c.outcomes == {i: (True, i + 1) for i in range(10)}


def test_recycling_with_deep_pipelines_respects_the_budget() -> None:
    # Up to four chunks queued per worker: none may take a worker past its budget.
    pool = ProcessPool(2, max_tasks_per_worker=700)
    try:
        run(pool, [P(T.inc, i) for i in range(100)])
        c = Collector()
        job = pool.open_job(limit=2, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
        job.expect(1e-6)
        job.put(0, [P(T.getpid_after, 0.0) for _ in range(5000)], last=True)
        job.close_input()
        assert c.settled.wait(60)
        pids = collections.Counter(c.outcomes[i][1] for i in range(5000))
        assert max(pids.values()) <= 700, pids
        assert pool.stats()["recycled"] >= 5
    finally:
        pool.close()


@pytest.mark.parametrize("form", ["int", "bigint", "float", "str", "list"])
def test_held_outcomes_of_every_form_survive_a_crash(pool: ProcessPool, form: str) -> None:
    # The journal holds ints and floats as array items, plain values and others as
    # pickled records: whichever it holds when the worker dies is read back, once.
    n, bad = 3000, 2500
    c = run(pool, [P(T.exit_if_as, i, bad, form) for i in range(n)])
    assert [i for i in range(n) if not c.outcomes[i][0]] == [bad]
    for i in range(n):
        if i != bad:
            assert c.outcomes[i] == (True, T.exit_if_as(i, -1, form)), i
    assert pool.stats()["crashed"] == 1


def test_a_run_of_int_results_broken_by_other_outcomes_keeps_every_one(
    pool: ProcessPool,
) -> None:
    # The worker's tight loop holds int results one after another; a str, a float, a
    # big int or an error leaves it mid-chunk and is handled as that task's: every
    # outcome arrives once, in its own form, with the right index.
    n = 6000
    c = run(pool, [P(T.mixed_forms, i) for i in range(n)])
    for i in range(n):
        if i % 101 == 7:
            ok, exc = c.outcomes[i]
            assert not ok and isinstance(exc, ValueError) and exc.args == (i,), i
        else:
            assert c.outcomes[i] == (True, T.mixed_forms(i)), i
    # A crash in such a run: the held ints before it come back, the rest still run.
    c = run(pool, [P(T.exit_if_negative, -1 if i == 4321 else i) for i in range(n)])
    assert [i for i in range(n) if not c.outcomes[i][0]] == [4321]
    assert all(c.outcomes[i] == (True, i) for i in range(n) if i != 4321)


# Python 3.12+ warns about fork() in a process with threads (the pool's own threads).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method: Linux here")
def test_fork_start_method_runs_tasks_and_recovers_held_outcomes() -> None:
    # With `fork` the shared block reaches the worker as the parent's object, not
    # pickled: the worker must map it all the same.
    pool = ProcessPool(2, multiprocessing.get_context("fork"))
    try:
        n, bad = 4000, 3333
        c = run(pool, [P(T.exit_if, i, bad) for i in range(n)])
        assert [i for i in range(n) if not c.outcomes[i][0]] == [bad]
        assert all(c.outcomes[i] == (True, i) for i in range(n) if i != bad)
    finally:
        pool.close()


def test_timeout_behind_held_outcomes_fails_only_the_slow_task(pool: ProcessPool) -> None:
    tasks: list[Callable[[], object]] = [P(T.inc, i) for i in range(3000)]
    tasks.append(P(T.sleep_then, 30.0, "never"))
    tasks += [P(T.inc, i) for i in range(3001, 4000)]
    started = time.monotonic()
    c = run(pool, tasks, timeout=1.0)
    assert time.monotonic() - started < 15
    ok, value = c.outcomes[3000]
    assert not ok
    assert isinstance(value, TaskTimeout)
    assert value.index == 3000
    for i in range(4000):
        if i != 3000:
            assert c.outcomes[i] == (True, i + 1), i
    assert pool.stats()["timed_out"] == 1


def test_slow_tasks_behind_held_outcomes_get_their_whole_timeout(pool: ProcessPool) -> None:
    # A timeout counts from the task's own start (read from the shared slot), not from
    # the last outcome the parent saw: these sleepers finish well inside it.
    tasks: list[Callable[[], object]] = [P(T.inc, i) for i in range(2000)]
    tasks += [P(T.sleep_then, 0.4, "slow") for _ in range(4)]
    tasks += [P(T.inc, i) for i in range(2004, 3000)]
    c = run(pool, tasks, timeout=2.0)
    assert [c.outcomes[i] for i in range(2000, 2004)] == [(True, "slow")] * 4
    assert all(c.outcomes[i] == (True, i + 1) for i in range(3000) if not 2000 <= i < 2004)
    assert pool.stats()["timed_out"] == 0


# ---------------------------------------------------------------- lifecycle races
# Each of these forces the interleaving that used to hang a caller: the hook runs in
# the window between the pool's "is it closed?" check and the act that relied on the
# answer, and lets a close() from another thread run there (waiting for it at most
# half a second: with the check and the act atomic, close() waits for them instead).


def _close_from_another_thread(pool: ProcessPool) -> threading.Thread:
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(0.5)
    return closer


def test_open_job_racing_close_settles(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, 1)])  # the manager thread runs
    closers: list[threading.Thread] = []
    command = pool._command

    def racing(*args: Any) -> None:
        closers.append(_close_from_another_thread(pool))
        command(*args)

    pool._command = racing  # type: ignore[method-assign]
    c = Collector()
    refused: RuntimeError | None = None
    try:
        job = pool.open_job(limit=1, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    except RuntimeError as exc:
        refused = exc
    if refused is not None:
        assert "closed" in str(refused)
    else:
        job.put(0, [P(T.inc, 1)])
        job.close_input()
        assert c.settled.wait(10), "a job opened while the pool closed never settled"
        ok, value = c.outcomes[0]
        assert (ok and value == 2) or "closed" in str(value)
    for closer in closers:
        closer.join(10)
        assert not closer.is_alive()


class _RacyDeque(deque[Any]):
    """A job queue whose ``extend`` first lets a ``close()`` run."""

    def __init__(self, pool: ProcessPool) -> None:
        super().__init__()
        self.pool = pool
        self.closers: list[threading.Thread] = []

    def extend(self, items: Any) -> None:
        if not self.closers:
            self.closers.append(_close_from_another_thread(self.pool))
        super().extend(items)


def test_put_racing_close_gets_an_outcome(pool: ProcessPool) -> None:
    run(pool, [P(T.inc, 1)])
    c = Collector()
    job = pool.open_job(limit=1, timeout=None, deliver=c.deliver, on_settled=c.settled.set)
    racy = _RacyDeque(pool)
    job._queue = racy
    core = getattr(job, "_core", None)  # the manager-owned half, where there is one
    if core is not None:
        core.queue = racy
    job.put(0, [P(T.inc, 1)])
    assert wait_for(lambda: 0 in c.outcomes, 10), "a task put while the pool closed got no outcome"
    ok, value = c.outcomes[0]
    assert (ok and value == 2) or "closed" in str(value)
    for closer in racy.closers:
        closer.join(10)
        assert not closer.is_alive()


def test_crash_is_logged_at_warning(pool: ProcessPool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasklanes.processes")
    c = run(pool, [P(T.exit_now, 3)])
    assert isinstance(c.outcomes[0][1], WorkerCrashed)
    crashes = [
        r
        for r in caplog.records
        if r.name == "tasklanes.processes"
        and r.levelno == logging.WARNING
        and getattr(r, "exitcode", None) == 3
    ]
    assert len(crashes) == 1, caplog.records
    record: Any = crashes[0]
    assert record.lane == "cpu" and record.index == 0 and record.pid > 0


# ---------------------------------------------------------------- worker recycling


def test_recycle_after_max_tasks_respects_the_budget() -> None:
    pool = ProcessPool(2, max_tasks_per_worker=7)
    try:
        # Quick tasks: chunks would hold many tasks, but never more than a worker has left.
        c = run(pool, [P(T.getpid_after, 0) for _ in range(300)])
        pids = collections.Counter(c.values())
        assert len(c.outcomes) == 300 and all(ok for ok, _ in c.outcomes.values())
        assert max(pids.values()) <= 7, pids
        stats = pool.stats()
        assert stats["recycled"] >= 300 // 7 - 2, stats
        assert stats["crashed"] == 0 and stats["killed"] == 0
    finally:
        pool.close()


def test_recycle_on_memory(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasklanes.processes")
    pool = ProcessPool(1, max_worker_memory=100 << 20)
    try:
        first = run(pool, [P(T.hog, 150)]).values()[0]
        later = run(pool, [P(T.getpid_after, 0) for _ in range(3)]).values()
        assert first not in later  # the hog's worker was replaced
        assert pool.stats()["recycled"] >= 1
        assert any(getattr(r, "reason", None) == "memory" for r in caplog.records)
    finally:
        pool.close()


def test_recycling_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        ProcessPool(1, max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="max_worker_memory"):
        ProcessPool(1, max_worker_memory=1.5)  # type: ignore[arg-type]


def test_worker_resources(pool: ProcessPool) -> None:
    run(pool, [P(T.spin, 0.05) for _ in range(4)])
    assert wait_for(lambda: len(pool.worker_pids()) == 2)
    res = pool.worker_resources()
    assert res["workers"] == 2
    assert res["rss_bytes"] > 1 << 20
    assert res["cpu_seconds"] > 0


def test_puts_and_jobs_racing_close_all_settle() -> None:
    """Unforced: threads that open jobs and put tasks while another thread closes the
    pool, with a tiny switch interval so that the threads interleave finely. Every job
    opened settles and every task put gets exactly one outcome. (The forced tests
    above are the regression tests of the two races; this one guards the whole
    shape, at a cost of a few seconds.)"""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(10):
            pool = ProcessPool(1)
            collectors: list[tuple[PoolJob, Collector, list[int]]] = []

            def feed(pool: ProcessPool = pool, out: list[Any] = collectors) -> None:
                for _ in range(5):
                    c = Collector()
                    try:
                        job = pool.open_job(
                            limit=1, timeout=None, deliver=c.deliver, on_settled=c.settled.set
                        )
                    except RuntimeError:
                        return  # closed: refused at once, fine
                    put: list[int] = []
                    out.append((job, c, put))
                    for i in range(0, 40, 4):
                        job.put(i, [P(T.inc, j) for j in range(i, i + 4)])
                        put.extend(range(i, i + 4))
                    job.close_input()

            feeders = [threading.Thread(target=feed) for _ in range(2)]
            for t in feeders:
                t.start()
            pool.close()
            for t in feeders:
                t.join(10)
            for job, c, put in collectors:
                assert c.settled.wait(10), "a job never settled"
                assert wait_for(lambda c=c, put=put: len(c.outcomes) == len(put), 10), (
                    f"{len(put) - len(c.outcomes)} tasks put got no outcome"
                )
    finally:
        sys.setswitchinterval(old)
