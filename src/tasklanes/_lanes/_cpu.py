"""The cpu lane on tasklanes' own worker-process pool.

The engine (``tasklanes._processes``) is synchronous and thread-based: a manager
thread owns the workers, chunks tasks adaptively, streams outcomes back and kills
what overruns. This module is its async face: it feeds a batch's tasks to a
``PoolJob`` as the pool asks for them, and turns the pool's outcome callbacks into
``batch.emit`` calls on the caller's loop through an :class:`Inbox`.

Cancellation: a cancelled batch cancels its job, which drops the queued tasks and
kills (SIGTERM, then SIGKILL) the workers running its tasks; the lane waits, shielded,
until the pool reports the job settled, so no process of the batch outlives the call.
"""

from __future__ import annotations

import pickle
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any

import anyio

from .._batch import Batch
from .._errors import TaskTimeout, WorkerCrashed
from .._processes._pool import PoolJob, ProcessPool, default_context
from .._stats import LaneStats, Tally
from .._tasks import END, WAIT, CachedCheck
from ._executor import check_cpu_task, default_cpu_count
from ._inbox import Inbox

__all__ = ["ProcessLane"]

_SETTLED = object()
#: Tasks kept queued in the pool beyond what it asks for, for a lazy input: enough
#: that a worker finishing a chunk never waits for the event loop to refill.
_MIN_QUEUED = 256
_MAX_QUEUED = 8192


class ProcessLane:
    kind = "cpu"

    def __init__(self, capacity: int | None, mp_context: BaseContext | None) -> None:
        self.capacity = capacity or default_cpu_count()
        self._context = mp_context
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._jobs: set[PoolJob] = set()
        self.check_task = CachedCheck(self._check)
        self.stats = LaneStats("cpu", self.capacity, live=self._live, extra=self.pool_stats)

    def _live(self) -> tuple[int, int]:
        with self._lock:
            jobs = list(self._jobs)
        running = sum(job.running for job in jobs)
        return running, sum(max(job.unfinished - job.running, 0) for job in jobs)

    @property
    def pool(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(self.capacity, self._context or default_context())
            return self._pool

    @staticmethod
    def _check(task: object, index: int) -> None:
        check_cpu_task(task, index)
        # Pickle the function up front: the common mistakes (a method of an object
        # holding a lock, a function not importable by its name) then fail before
        # anything runs. Arguments are pickled with their chunk; a task whose
        # arguments do not pickle fails alone, naming its index. CachedCheck makes
        # this once per distinct function.
        from .._call import unwrap_callable

        fn = unwrap_callable(task)
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"task {index} could not be pickled for kind='cpu': its function "
                f"{getattr(fn, '__qualname__', fn)!r} does not pickle ({exc}); use a "
                "module-level function"
            ) from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def pool_stats(self) -> dict[str, int]:
        pool = self._pool
        return pool.stats() if pool is not None else {}

    async def run(self, batch: Batch) -> None:
        inbox = Inbox(batch.loop)
        job = self.pool.open_job(
            limit=min(batch.limit, self.capacity),
            timeout=batch.timeout,
            deliver=inbox.put_many,
            on_settled=lambda: inbox.put(_SETTLED),
        )
        batch.wake = inbox.poke
        watch_gone = getattr(batch.source, "watch_gone", None)  # limiter= holds until then
        if watch_gone is not None:
            job.on_gone = watch_gone()
        with self._lock:
            self._jobs.add(job)
        runner = _CpuBatch(self, batch, job, inbox)
        try:
            await runner.run()
        finally:
            with self._lock:
                self._jobs.discard(job)
            tally = runner.tally
            tally.run_count += job.run_count
            tally.run_total += job.run_total
            tally.run_max = max(tally.run_max, job.run_max)
            # Queue lag: a task's turnaround (handed to the pool -> outcome back) less
            # its run time as measured in the worker. The workers measure run time per
            # chunk, so per task this uses the batch's mean run time.
            if runner.turnarounds:
                mean_run = job.run_total / job.run_count if job.run_count else 0.0
                tally.wait_count += runner.turnarounds
                tally.wait_total += max(
                    runner.turnaround_total - mean_run * runner.turnarounds, 0.0
                )
                tally.wait_max = max(tally.wait_max, runner.turnaround_max - mean_run, 0.0)
            self.stats.merge(tally)


class _CpuBatch:
    def __init__(self, lane: ProcessLane, batch: Batch, job: PoolJob, inbox: Inbox) -> None:
        self.lane = lane
        self.batch = batch
        self.job = job
        self.inbox = inbox
        self.outstanding = 0
        self.settled = False
        self.tally = Tally()
        self.put_at: dict[int, float] = {}  # index -> when handed to the pool
        self.put_all_at: float | None = None  # a list input: all handed over at once
        self.turnarounds = 0
        self.turnaround_total = 0.0
        self.turnaround_max = 0.0

    async def run(self) -> None:
        batch = self.batch
        job = self.job
        try:
            await self._fill()
            while self.outstanding or not batch.source.exhausted:
                self._deliver(await self.inbox.get())
                if batch.stopping:
                    break
                await self._fill()
            if batch.stopping:
                await anyio.lowlevel.checkpoint()  # fail-fast: run the cleanup below
            job.close_input()
            # Every outcome is in, but a worker killed for a timeout may still be
            # dying: the pool settles the job once it is gone, so no work of the
            # batch outlives the call.
            while not self.settled:
                self._deliver(await self.inbox.get())
        except BaseException:
            # Kill what runs, drop what waits, and wait (shielded) for the pool to say
            # that none of this batch's processes work on it any more.
            job.cancel()
            with anyio.CancelScope(shield=True):
                while not self.settled:
                    self._deliver(await self.inbox.get(), cancelled=True)
            self.tally.cancelled += self.outstanding
            raise

    async def _fill(self) -> None:
        batch = self.batch
        source = batch.source
        job = self.job
        if source.in_memory and not batch.stopping:
            # A list: hand it all over at once, the pool paces it. One timestamp
            # serves every task for the queue-lag figures.
            rest = source.take_rest()
            if rest is not None:
                if rest:
                    self.outstanding += len(rest)
                    self.put_all_at = time.monotonic()
                    job.put(rest)
                return
        if source.in_memory and source.size is not None:
            want = source.size
        else:
            want = min(max(job.demand + self.outstanding, _MIN_QUEUED), _MAX_QUEUED)
        added: list[tuple[int, Any]] = []
        while self.outstanding + len(added) < want and not batch.stopping:
            try:
                item = source.next_nowait()
                if item is WAIT:
                    # Never wait for the gate while outcomes are owed: they are what
                    # opens it (an ordered amap waits for its oldest result), and they
                    # are only handed over once this returns.
                    if added or (self.outstanding and source.blocked()):
                        break
                    item = await source.next()
            except Exception as exc:
                batch.fail(exc)
                break
            if item is END:
                break
            added.append(item)
        if added:
            self.outstanding += len(added)
            now = time.monotonic()
            self.put_at.update(dict.fromkeys([index for index, _ in added], now))
            job.put(added)

    def _deliver_ok(self, items: list[Any]) -> None:
        """The common case of a list input, in bulk: every outcome a success, every
        task handed over at the same moment (so one turnaround serves them all)."""
        n = len(items)
        self.outstanding -= n
        turnaround = time.monotonic() - (self.put_all_at or 0.0)
        self.turnarounds += n
        self.turnaround_total += turnaround * n
        if turnaround > self.turnaround_max:
            self.turnaround_max = turnaround
        self.tally.completed += n
        self.batch.emit_ok_many([item[0] for item in items], [item[2] for item in items])

    def _deliver(self, items: list[Any], cancelled: bool = False) -> None:
        if (
            not cancelled
            and self.put_all_at is not None
            and _SETTLED not in items
            and all([item[1] for item in items])
        ):
            self._deliver_ok(items)
            return
        tally = self.tally
        emit = self.batch.emit
        now = time.monotonic()
        put_at = self.put_at
        put_all_at = self.put_all_at
        longest = 0.0
        for item in items:
            if item is _SETTLED:
                self.settled = True
                continue
            index, ok, value = item
            self.outstanding -= 1
            turnaround = now - (put_all_at if put_all_at is not None else put_at.pop(index, now))
            self.turnarounds += 1
            self.turnaround_total += turnaround
            if turnaround > longest:
                longest = turnaround
            if cancelled:
                tally.cancelled += 1
                continue
            if ok:
                tally.completed += 1
            elif isinstance(value, TaskTimeout):
                tally.timed_out += 1
            elif isinstance(value, WorkerCrashed):
                tally.crashed += 1
            else:
                tally.failed += 1
            emit(index, ok, value)
        if longest > self.turnaround_max:
            self.turnaround_max = longest
