"""The cpu lane on tasklanes' own worker-process pool.

The engine (``tasklanes._processes``) is synchronous and thread-based: a manager
thread owns the workers, chunks tasks adaptively, streams outcomes back and kills
what overruns. This module is its async face: it feeds a batch's tasks to a
``PoolJob`` as the pool asks for them, and turns the pool's outcome callbacks into
``batch.emit`` calls on the caller's loop through an `Inbox`.

Cancellation: a cancelled batch cancels its job, which drops the queued tasks and
kills (SIGTERM, then SIGKILL) the workers running its tasks; the lane waits, shielded,
until the pool reports the job settled, so no process of the batch outlives the call.

``run_blocking`` runs a batch of a list input in the calling thread, without an event
loop (``run_all_sync`` in a plain script: no anyio, no asyncio to import and start).
It is the same batch runner (`_CpuBatch`): the same hand-over, delivery and figures;
only the waits differ, on a queue instead of the loop (Ctrl-C, a ``KeyboardInterrupt``
in that wait, cancels the job like a cancelled caller).
"""

from __future__ import annotations

import queue
import time
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from .._processes._pickling import check_task_function
from .._processes._pool import PoolJob, ProcessPool
from .._stats import LaneStats, Tally, record, shifted
from .._tasks import CachedCheck, check_cpu_task
from ._base import LaneBase, Outcome, classify, count, pull

if TYPE_CHECKING:
    from .._batch import Batch
    from .._inbox import Inbox
    from .._snapshots import WorkerResources

__all__ = ["ProcessLane"]

_SETTLED = object()
#: Tasks kept queued in the pool beyond what it asks for, for a lazy input: enough
#: that a worker finishing a chunk never waits for the event loop to refill.
_MIN_QUEUED = 256
_MAX_QUEUED = 8192


class ProcessLane(LaneBase):
    kind = "cpu"

    def __init__(
        self,
        capacity: int,
        mp_context: BaseContext | None,
        *,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self._context = mp_context
        self._recycling = (max_tasks_per_worker, max_worker_memory)
        self.check_task = CachedCheck(self._check)
        self.stats = LaneStats(
            "cpu",
            self.capacity,
            live=self._live,
            extra=self.pool_stats,
            resources=self._worker_resources,
        )

    def _worker_resources(self) -> WorkerResources:
        """The workers' resident memory and CPU time, an overload figure for `stats()`."""
        from .._snapshots import WorkerResources
        pool: ProcessPool | None = self._resource
        if pool is None:
            return WorkerResources()
        figures = pool.worker_resources()
        return WorkerResources(
            int(figures["workers"]), int(figures["rss_bytes"]), figures["cpu_seconds"]
        )

    def _live(self) -> tuple[int, int]:
        jobs = [run.job for run in self.runs() if run.job is not None]
        running = sum(job.running for job in jobs)
        return running, sum(max(job.unfinished - job.running, 0) for job in jobs)

    @property
    def pool(self) -> ProcessPool:
        """The lane's worker processes, started on first use; ``RuntimeError`` once closed."""
        max_tasks, max_memory = self._recycling
        return self.resource(
            lambda: ProcessPool(
                self.capacity,
                self._context,
                max_tasks_per_worker=max_tasks,
                max_worker_memory=max_memory,
            )
        )

    @staticmethod
    def _check(task: object, index: int) -> None:
        # Lambdas and closures are allowed: they travel by value (_pickling).
        check_cpu_task(task, index, strict_pickle=False)
        # Pickle the function up front: the common mistakes (a method of an object
        # holding a lock, a lambda without cloudpickle) then fail before anything runs.
        # CachedCheck makes this once per distinct function.
        check_task_function(task, index)

    def shutdown(self, runs: list[Any], resource: Any) -> None:
        # The pool fails the jobs still open and stops its workers.
        if resource is not None:
            resource.close()

    def pool_stats(self) -> dict[str, int]:
        pool: ProcessPool | None = self._resource
        return pool.stats() if pool is not None else {}

    async def run(self, batch: Batch) -> None:
        from .._inbox import Inbox

        inbox = Inbox(batch.loop)
        batch.wake = inbox.poke  # limiter=/retry=: a task is ready to pull
        # limiter=: a task killed for its timeout holds its limiters until its worker
        # is gone; the pool tells when (see `_control`).
        watch_gone = getattr(batch.source, "watch_gone", None)
        runner = _CpuBatch(self, batch, inbox)
        self.open_run(runner)
        try:
            runner.job = self.pool.open_job(
                limit=min(batch.limit, self.capacity),
                timeout=batch.timeout,
                deliver=inbox.put_many,
                # The job settles once no worker works on it any more.
                on_settled=lambda: inbox.put(_SETTLED),
                on_gone=None if watch_gone is None else watch_gone(),
            )
            await runner.run()
        finally:
            self.close_run(runner)
            if runner.job is not None:
                self.stats.merge(runner.figures(runner.job))

    def run_blocking(self, batch: Batch) -> None:
        """`run` in the calling thread, without an event loop, for a list input with
        no controls (``limiter=``, ``retry=``) and no progress (see the module doc)."""
        assert batch.source.in_memory and batch.controls is None and batch.progress is None
        inbox = _BlockingInbox()
        runner = _CpuBatch(self, batch, inbox)
        self.open_run(runner)
        try:
            runner.job = self.pool.open_job(
                limit=min(batch.limit, self.capacity),
                timeout=batch.timeout,
                deliver=inbox.put_many,
                on_settled=lambda: inbox.put(_SETTLED),
            )
            runner.run_blocking()
        finally:
            self.close_run(runner)
            if runner.job is not None:
                self.stats.merge(runner.figures(runner.job))


class _BlockingInbox:
    """What `Inbox` does for `_CpuBatch`, for a caller that waits in its own thread:
    the pool's threads put lists of outcomes, `get` blocks until there are some."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put([item])

    def put_many(self, items: list[Any]) -> None:
        self._queue.put(items)

    def poke(self) -> None:
        self._queue.put([])

    def get(self) -> list[Any]:
        """Everything delivered so far; waits for the first delivery. A signal's
        exception (Ctrl-C) is raised from the wait."""
        items = self._queue.get()
        get = self._queue.get_nowait
        while True:
            try:
                more = get()
            except queue.Empty:
                return items
            items = [*items, *more]


class _CpuBatch:
    def __init__(self, lane: ProcessLane, batch: Batch, inbox: Inbox | _BlockingInbox) -> None:
        self.lane = lane
        self.batch = batch
        self.job: PoolJob | None = None
        self.inbox = inbox
        self.outstanding = 0
        self.settled = False
        self.tally = Tally()
        self.put_at: dict[int, float] = {}  # index -> when handed to the pool
        self.put_all_at: float | None = None  # a list input: all handed over at once
        self.turnarounds = 0
        self.turnaround_total = 0.0
        self.turnaround_max = 0.0
        self.turnaround_hist: dict[int, int] = {}  # for the wait percentiles

    def figures(self, job: PoolJob) -> Tally:
        """The batch's tally with the pool's run-time figures and the queue lag."""
        tally = self.tally
        tally.run_count += job.run_count
        tally.run_total += job.run_total
        tally.run_max = max(tally.run_max, job.run_max)
        tally.run_hist = job.run_hist  # per chunk: a chunk's tasks get its mean
        # Queue lag: a task's turnaround (handed to the pool -> outcome back) less
        # its run time as measured in the worker. The workers measure run time per
        # chunk, so per task this uses the batch's mean run time.
        if self.turnarounds:
            mean_run = job.run_total / job.run_count if job.run_count else 0.0
            tally.wait_count += self.turnarounds
            tally.wait_total += max(self.turnaround_total - mean_run * self.turnarounds, 0.0)
            tally.wait_max = max(tally.wait_max, self.turnaround_max - mean_run, 0.0)
            tally.wait_hist = shifted(self.turnaround_hist, -mean_run)
        return tally

    async def run(self) -> None:
        import anyio

        batch = self.batch
        job = self.job
        inbox = self.inbox
        assert job is not None and not isinstance(inbox, _BlockingInbox)
        try:
            await self._fill()
            while self.outstanding or not batch.source.exhausted:
                self._deliver(await inbox.get())
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
                self._deliver(await inbox.get())
        except BaseException:
            # Kill what runs, drop what waits, and wait (shielded) for the pool to say
            # that none of this batch's processes work on it any more.
            job.cancel()
            with anyio.CancelScope(shield=True):
                while not self.settled:
                    self._deliver(await inbox.get(), cancelled=True)
            self.tally.cancelled += self.outstanding
            raise

    def run_blocking(self) -> None:
        """`run` for a list input, waiting in this thread (`ProcessLane.run_blocking`)."""
        batch = self.batch
        job = self.job
        inbox = self.inbox
        assert job is not None and isinstance(inbox, _BlockingInbox)
        try:
            self._hand_over_list()
            while self.outstanding and not batch.stopping:
                self._deliver(inbox.get())
            if not batch.stopping:
                job.close_input()
                # As in `run`: the job settles once a worker killed for a timeout is gone.
                while not self.settled:
                    self._deliver(inbox.get())
                return
        except BaseException:
            self._cancel_blocking(inbox)
            raise
        self._cancel_blocking(inbox)  # fail-fast: the batch's error is raised by our caller

    def _cancel_blocking(self, inbox: _BlockingInbox) -> None:
        """Kill what runs, drop what waits, and wait for the pool to say that none of
        this batch's processes work on it any more (as `run` does, shielded)."""
        assert self.job is not None
        self.job.cancel()
        while not self.settled:
            try:
                self._deliver(inbox.get(), cancelled=True)
            except KeyboardInterrupt:
                continue  # a second Ctrl-C: the workers are being stopped already
        self.tally.cancelled += self.outstanding

    def _hand_over_list(self) -> bool:
        """A list: hand it all over at once, the pool paces it (True if done so). One
        timestamp serves every task for the queue-lag figures."""
        batch = self.batch
        source = batch.source
        job = self.job
        assert job is not None
        if not source.in_memory or batch.stopping:
            return False
        rest = source.take_rest()
        if rest is None:
            return False
        if rest:
            self.outstanding += len(rest)
            self.put_all_at = time.monotonic()
            job.put(rest)
        return True

    async def _fill(self) -> None:
        batch = self.batch
        source = batch.source
        job = self.job
        assert job is not None
        if self._hand_over_list():
            return
        if source.in_memory and source.size is not None:
            want = source.size
        else:
            want = min(max(job.demand + self.outstanding, _MIN_QUEUED), _MAX_QUEUED)
        start, tasks = await pull(batch, want - self.outstanding, owed=self.outstanding > 0)
        added = list(enumerate(tasks, start))
        # (With limiter=, the tasks pulled hold their limiters already: no worker
        # process waits for one; see `_control`.)
        if added:
            self.outstanding += len(added)
            now = time.monotonic()
            self.put_at.update(dict.fromkeys([index for index, _ in added], now))
            job.put(added)

    def _deliver_ok(self, items: list[Any]) -> None:
        """The common case, in bulk: every outcome a success. The turnaround figures
        are taken per delivery (its tasks' mean, and the oldest for the maximum), not
        per task."""
        n = len(items)
        self.outstanding -= n
        now = time.monotonic()
        indexes = [item[0] for item in items]
        put_all_at = self.put_all_at
        if put_all_at is not None:
            total = (now - put_all_at) * n
            longest = now - put_all_at
        else:
            pop = self.put_at.pop
            put = [pop(index, now) for index in indexes]
            total = now * n - sum(put)
            longest = now - min(put)
        self.turnarounds += n
        self.turnaround_total += total
        record(self.turnaround_hist, total / n, n)
        if longest > self.turnaround_max:
            self.turnaround_max = longest
        count(self.tally, Outcome.COMPLETED, n)
        self.batch.emit_ok_many(indexes, [item[2] for item in items])

    def _deliver(self, items: list[Any], cancelled: bool = False) -> None:
        if not items:
            return  # a poke (`batch.wake`: limiter=/retry= has a task ready), no outcome
        if not cancelled and _SETTLED not in items and all([item[1] for item in items]):
            self._deliver_ok(items)
            return
        tally = self.tally
        emit = self.batch.emit
        now = time.monotonic()
        put_at = self.put_at
        put_all_at = self.put_all_at
        longest = 0.0
        turnaround_hist = self.turnaround_hist
        for item in items:
            if item is _SETTLED:
                self.settled = True
                continue
            index, ok, value = item
            self.outstanding -= 1
            turnaround = now - (put_all_at if put_all_at is not None else put_at.pop(index, now))
            self.turnarounds += 1
            self.turnaround_total += turnaround
            record(turnaround_hist, turnaround)
            if turnaround > longest:
                longest = turnaround
            if cancelled:
                tally.cancelled += 1
                continue
            count(tally, classify(ok, value))
            emit(index, ok, value)
        if longest > self.turnaround_max:
            self.turnaround_max = longest
