"""The parent side of tasklanes' worker-process pool: its public face and lifecycle.

A [ProcessPool][tasklanes._processes._pool.ProcessPool] owns `max_workers` worker
processes and one manager thread (`_manager.Manager`) that does all the work: it
spawns workers (through the spawner thread, because starting a process blocks),
pickles chunks of tasks and writes them to workers, reads their results in bulk,
enforces timeouts, kills, recycles and replaces workers, and hands outcomes to each
job's `deliver` callback. Callers only queue work and commands under a short lock and
poke a wake-up pipe, so nothing they call blocks on a worker.

The parts, one concern each:

- `_pool` (here): `ProcessPool`, its lifecycle ([PoolState][tasklanes._processes._pool.PoolState]);
- `_job`: `PoolJob` (the caller's handle) and `JobCore` (the manager's books);
- `_manager`, `_state`, `_results`, `_dispatch`, `_reaper`, `_delivery`: the manager
  thread, in layers (loop and commands; its state; reading results; dispatch and chunk
  sizing; deadlines, kills, crash blame, recycling and respawns; delivery);
- `_commands`: what other threads ask of the manager; `_spawner`: the spawner thread;
- `_workers`: a worker as the parent sees it, with its state enum;
- `_wire`: the bytes (chunk encoding, frames, held outcomes, journal), pure;
- `_protocol`, `_shared`, `_worker`: the formats, the shared block, the worker's code.
"""

from __future__ import annotations

import atexit
import enum
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

from ._commands import OpenJob
from ._context import default_context, refuse_while_importing_main
from ._job import Delivered, JobCore, Outcome, PoolJob, Run
from ._manager import Manager
from ._state import STAT_NAMES
from ._workers import cpu_seconds, rss_bytes
from ._zygote import Zygote, can_fork_zygote

__all__ = ["Delivered", "Outcome", "PoolJob", "PoolState", "ProcessPool", "Run", "default_context"]


class PoolState(enum.Enum):
    NEW = "new"  # nothing started yet
    RUNNING = "running"  # the manager thread runs
    CLOSED = "closed"  # close() was called; the manager stops (or has stopped)


class ProcessPool:
    """A warm pool of worker processes shared by many jobs.

    Nothing starts in the constructor. The first `open_job` starts the manager
    thread, which starts the workers; the caller does not wait for them.

    `mp_context` picks the start method; fork, forkserver and spawn all work
    (`_context` says what each needs). The default, None, is decided when the pool
    starts: a zygote (`_zygote`) when this process runs one thread only, else
    `default_context()` (forkserver on Linux, spawn elsewhere).

    `max_tasks_per_worker` and `max_worker_memory` (bytes of resident memory, checked
    after each chunk of tasks) recycle workers: one that reaches either limit finishes
    what it holds, exits, and a fresh one takes its place. No task is lost or run twice.

    `worker_nice` (0-19) lowers each worker's scheduling priority by that much below
    this process's own, as each starts (see `_workers.lower_priority`).
    """

    def __init__(
        self,
        max_workers: int,
        mp_context: BaseContext | None = None,
        *,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
        worker_nice: int = 0,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        _check_limit("max_tasks_per_worker", max_tasks_per_worker)
        _check_limit("max_worker_memory", max_worker_memory)
        self._max_workers = max_workers
        self._ctx = mp_context
        self._max_tasks_per_worker = max_tasks_per_worker
        self._max_worker_memory = max_worker_memory
        self._worker_nice = worker_nice
        self._lock = threading.Lock()
        self._state = PoolState.NEW
        self._manager: Manager | None = None
        self._start_method: str | None = None
        self._stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def start_method(self) -> str | None:
        """How its workers start: `"zygote"`, or the `multiprocessing` start method's
        name; None until the pool starts."""
        return self._start_method

    def open_job(
        self,
        *,
        limit: int,
        timeout: float | None,
        deliver: Callable[[list[Delivered]], None],
        on_settled: Callable[[], None],
        on_gone: Callable[[int], None] | None = None,
        runs: bool = False,
        map_fn: Callable[[Any], Any] | None = None,
    ) -> PoolJob:
        """Open a job; starts the pool on first use (without waiting for it).

        `deliver` is called from a pool thread with a list of outcomes, one call per
        batch the pool read from its workers; with `runs`, successes that workers sent
        in bulk come as [Run][tasklanes._processes._job.Run] blocks instead (the
        lane's fast path: no tuple per task). `on_settled` is called once, from a pool
        thread: after `PoolJob.cancel` once none of the job's tasks runs anymore, or
        after `PoolJob.close_input` once every task put has been delivered.
        `on_gone(index)` (optional) is called from the manager thread when the worker
        killed for task `index`'s timeout has been reaped (`limiter=` holds a killed
        task's limiters until then).
        `map_fn` (optional): the tasks put are not callables but items, each run as
        ``map_fn(item)`` (``amap`` on the cpu lane: no task object per item).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        refuse_while_importing_main()  # a worker re-running an unguarded script: say so
        core = JobCore(limit, timeout, deliver, on_settled, runs, map_fn)
        core.on_gone = on_gone
        # The check and the queuing of the job are one step under the lock, which
        # close() takes too: a close() from another thread comes either before (we
        # raise) or after (its shutdown settles this job).
        with self._lock:
            if self._state is PoolState.CLOSED:
                raise RuntimeError("this ProcessPool is closed")
            if self._manager is None:
                self._start()
            manager = self._manager
            assert manager is not None
            if not self._command(OpenJob(core)):
                raise RuntimeError("this ProcessPool is closed")
        return PoolJob(manager, core)

    def close(self) -> None:
        """Stop the pool: terminate, then kill, and reap every worker. Idempotent.

        Safe from any thread, also while jobs run (their unfinished tasks fail with the
        closed error). Called from a pool callback, it returns at once and the manager
        thread finishes the shutdown right after.
        """
        with self._lock:
            if self._state is PoolState.CLOSED:
                return
            self._state = PoolState.CLOSED
            manager = self._manager
        if manager is None:
            return
        manager.request_stop()
        if manager.thread is not threading.current_thread():
            manager.thread.join()
        atexit.unregister(self.close)

    def stats(self) -> dict[str, int]:
        """Counters: `workers` (alive and serving), `starting`, `started` (in total),
        `crashed`, `killed` (by timeouts and cancels), `timed_out`, `recycled`
        (workers replaced after `max_tasks_per_worker` tasks or past
        `max_worker_memory`), `chunks` and `tasks` (sent to workers; a task handed back
        unstarted and sent again counts once), `returned`
        (chunks handed back over budget), `jobs` (open), `spawn_errors`."""
        return dict(self._stats)

    def worker_pids(self) -> list[int]:
        """Process ids of the workers currently serving."""
        manager = self._manager
        return list(manager.pids) if manager is not None else []

    def worker_resources(self) -> dict[str, float]:
        """The serving workers' resources, read from `/proc` now: `workers`,
        `rss_bytes` (resident memory, summed) and `cpu_seconds` (user + system CPU time,
        summed). Zeros where `/proc` cannot be read (not Linux)."""
        pids = self.worker_pids()
        rss = 0
        cpu = 0.0
        for pid in pids:
            rss += rss_bytes(pid) or 0
            cpu += cpu_seconds(pid) or 0.0
        return {"workers": len(pids), "rss_bytes": rss, "cpu_seconds": cpu}

    # ------------------------------------------------------------------ plumbing

    def _start(self) -> None:
        # Called with the lock held, once.
        zygote: Zygote | None = None
        if self._ctx is None:
            # The default start method is decided here, once per pool, before the
            # pool starts threads of its own (see `_zygote`).
            if can_fork_zygote():
                zygote = Zygote.fork()
                self._ctx = multiprocessing.get_context("fork")  # for its Pipe() only
            else:
                self._ctx = default_context()
        self._start_method = "zygote" if zygote is not None else self._ctx.get_start_method()
        try:
            self._manager = Manager(
                self._max_workers,
                self._ctx,
                self._stats,
                self._max_tasks_per_worker,
                self._max_worker_memory,
                zygote,
                worker_nice=self._worker_nice,
            )
        except BaseException:
            if zygote is not None:
                zygote.close()
            raise
        self._manager.start()
        self._state = PoolState.RUNNING
        atexit.register(self.close)

    def _command(self, command: OpenJob) -> bool:
        assert self._manager is not None
        return self._manager.submit(command)


def _check_limit(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (or None: no limit), got {value}")
