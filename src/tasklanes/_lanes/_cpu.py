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

One file past 500 lines on purpose: the lane and its batch runner share the hand-over
(list, lazy input, items of `amap`) and the delivery; apart, each would reach into
the other's state.
"""

from __future__ import annotations

import functools
import queue
import time
from bisect import bisect_right
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from .._call import Call
from .._processes._pickling import check_task_function
from .._processes._pool import PoolJob, ProcessPool, Run
from .._stats import LaneStats, Tally, record, shifted
from .._tasks import CachedCheck, check_cpu_task
from ._base import LaneBase, Outcome, classify, count, pull

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._batch import Batch
    from .._inbox import Inbox
    from .._snapshots import WorkerResources

__all__ = ["ProcessLane"]

_SETTLED = object()
#: Tasks kept queued in the pool beyond what it asks for, for a lazy input: enough
#: that a worker finishing a chunk never waits for the event loop to refill. And at
#: most this many outstanding (queued or running): the memory bound of a lazy input
#: (two workers' pipelines full of trivial tasks: 2 x 4 chunks of 2048).
_MIN_QUEUED = 256
_MAX_QUEUED = 16384
#: Functions whose run time per task the lane remembers (to size the first chunks of
#: their next batch); forgotten all at once past this many.
_MAX_REMEMBERED = 256


class ProcessLane(LaneBase):
    kind = "cpu"
    #: ``amap`` hands this lane the items themselves with ``batch.map_fn``: the pool
    #: sends them to the workers as they are (`_wire.encode_items`), no `Call` each.
    maps_items = True

    def __init__(
        self,
        capacity: int,
        mp_context: BaseContext | None,
        *,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
        worker_nice: int = 0,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self._context = mp_context
        self._recycling = (max_tasks_per_worker, max_worker_memory)
        self._worker_nice = worker_nice
        self.check_task = CachedCheck(self._check)
        # id(fn) -> (fn, seconds per task in its last batch); fn kept so its id stays.
        self.task_seconds: dict[int, tuple[object, float]] = {}
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
                worker_nice=self._worker_nice,
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
            self._open_job(runner, inbox, None if watch_gone is None else watch_gone())
            await runner.run()
        finally:
            self._close_job(runner)

    def _open_job(
        self,
        runner: _CpuBatch,
        inbox: Inbox | _BlockingInbox,
        on_gone: Callable[[int], None] | None = None,
    ) -> None:
        """The pool job of a batch, the same whether its caller waits on the loop
        (`run`) or in its own thread (`run_blocking`)."""
        batch = runner.batch
        runner.job = self.pool.open_job(
            limit=min(batch.limit, self.capacity),
            timeout=batch.timeout,
            deliver=inbox.put_many,
            # The job settles once no worker works on it any more.
            on_settled=lambda: inbox.put(_SETTLED),
            on_gone=on_gone,
            runs=True,
            map_fn=batch.map_fn,
        )

    def _close_job(self, runner: _CpuBatch) -> None:
        self.close_run(runner)
        if runner.job is not None:
            self.stats.merge(runner.figures(runner.job))
            self._remember(runner.fn, runner.job)

    def expected_seconds(self, fn: object) -> float | None:
        """How long a task of `fn` took in its last batch here (per task), if known."""
        known = self.task_seconds.get(id(fn))
        return known[1] if known is not None and known[0] is fn else None

    def _remember(self, fn: object, job: PoolJob) -> None:
        if fn is None or not job.run_count:
            return
        if len(self.task_seconds) >= _MAX_REMEMBERED:
            self.task_seconds.clear()
        self.task_seconds[id(fn)] = (fn, job.run_total / job.run_count)

    def run_blocking(self, batch: Batch) -> None:
        """`run` in the calling thread, without an event loop, for a list input with
        no controls (``limiter=``, ``retry=``) and no progress (see the module doc)."""
        assert batch.source.in_memory and batch.controls is None and batch.progress is None
        inbox = _BlockingInbox()
        runner = _CpuBatch(self, batch, inbox)
        self.open_run(runner)
        try:
            self._open_job(runner, inbox)
            runner.run_blocking()
        finally:
            self._close_job(runner)


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
        self.fn: object = None  # the function of the batch's first task, if any
        self.put_times = _PutTimes()  # a lazy input: when each part went to the pool
        self.put_all_at: float | None = None  # a list input: all handed over at once
        self.told_last = False  # the pool knows the input has ended (`put(last=True)`)
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
        first = source.pulled
        rest = source.take_rest()
        if rest is None:
            return False
        if rest:
            self._first_put(job, rest[0])
            self.outstanding += len(rest)
            self.put_all_at = time.monotonic()
        job.put(first, rest, last=True)
        self.told_last = True
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
            asked = job.demand + self.outstanding
            # An iterator batch (`amap`, `as_completed`) bounds what is pulled ahead of
            # its consumer by a window sized from `limit`: tiny tasks need the pool's
            # own demand in flight (thousands), or every chunk is a round trip.
            batch.widen(asked)
            want = min(max(asked, _MIN_QUEUED), _MAX_QUEUED)
        start, tasks = await pull(batch, want - self.outstanding, owed=self.outstanding > 0)
        # (With limiter=, the tasks pulled hold their limiters already: no worker
        # process waits for one; see `_control`.)
        last = source.exhausted
        if tasks:
            first_part = not start
            if first_part:
                self._first_put(job, tasks[0])
            self.outstanding += len(tasks)
            self.put_times.add(start, len(tasks), time.monotonic())
            job.put(start, tasks, last=last)
            if first_part and not last and job.demand:
                # The first part was sized before the pool knew the function: if it
                # ran here before (a warm start, `_first_put`), the pool wants full
                # chunks now. Pull all it asks for at once rather than after the
                # first outcomes come back.
                await self._fill()
        elif last and not self.told_last:
            job.put(start, [], last=True)
        self.told_last = last

    def _first_put(self, job: PoolJob, task: object) -> None:
        """Before the batch's first tasks go to the pool: if the lane has run this
        function before, tell the pool how long its tasks took (a warm start: full
        chunks at once instead of growing from one task)."""
        kind = type(task)
        if self.batch.map_fn is not None:
            self.fn = self.batch.map_fn  # an amap item (`Batch.map_fn`)
        elif kind is Call:
            self.fn = task.fn  # type: ignore[attr-defined]
        elif kind is functools.partial:
            self.fn = task.func  # type: ignore[attr-defined]
        else:
            return
        seconds = self.lane.expected_seconds(self.fn)
        if seconds is not None:
            job.expect(seconds)

    def _waited(self, first: int, n: int, now: float) -> tuple[float, float]:
        """Tasks `first` to `first + n - 1`, back at `now`: their summed turnaround,
        and the longest."""
        put_all_at = self.put_all_at
        if put_all_at is not None:
            return (now - put_all_at) * n, now - put_all_at
        return self.put_times.take(first, n, now)

    def _deliver_runs(self, runs: list[Run]) -> None:
        """The common case, in bulk: blocks of successes of consecutive tasks, each
        handed to the batch as one (`emit_ok_many` with a `range`). The turnaround
        figures are taken per block (its tasks' mean, and the oldest for the
        maximum), not per task."""
        now = time.monotonic()
        emit_ok_many = self.batch.emit_ok_many
        done = 0
        total = 0.0
        longest = 0.0
        for run in runs:
            first = run.first
            values = run.values
            n = len(values)
            waited, oldest = self._waited(first, n, now)
            done += n
            total += waited
            if oldest > longest:
                longest = oldest
            emit_ok_many(range(first, first + n), values)
        self.outstanding -= done
        self.turnarounds += done
        self.turnaround_total += total
        if done:
            record(self.turnaround_hist, total / done, done)
        if longest > self.turnaround_max:
            self.turnaround_max = longest
        count(self.tally, Outcome.COMPLETED, done)

    def _deliver(self, items: list[Any], cancelled: bool = False) -> None:
        if not items:
            return  # a poke (`batch.wake`: limiter=/retry= has a task ready), no outcome
        if not cancelled and all([type(item) is Run for item in items]):
            self._deliver_runs(items)
            return
        tally = self.tally
        emit = self.batch.emit
        now = time.monotonic()
        longest = 0.0
        turnaround_hist = self.turnaround_hist
        for item in items:
            if item is _SETTLED:
                self.settled = True
                continue
            if type(item) is Run:
                if not cancelled:
                    self._deliver_runs([item])
                    continue
                n = len(item.values)
                waited, oldest = self._waited(item.first, n, now)
                self.outstanding -= n
                self.turnarounds += n
                self.turnaround_total += waited
                record(turnaround_hist, waited / n, n)
                longest = max(longest, oldest)
                tally.cancelled += n
                continue
            index, ok, value = item
            self.outstanding -= 1
            turnaround = self._waited(index, 1, now)[0]
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


class _PutTimes:
    """When the parts of a lazy input were handed to the pool (one `put` each), for
    the queue-lag figures. A part is forgotten once all its tasks are back, so this
    holds about as many entries as there are parts in flight."""

    __slots__ = ("ends", "firsts", "left", "times")

    def __init__(self) -> None:
        self.firsts: list[int] = []  # ascending: parts are put in index order
        self.ends: list[int] = []
        self.times: list[float] = []
        self.left: list[int] = []  # tasks of the part not back yet

    def add(self, first: int, n: int, now: float) -> None:
        self.firsts.append(first)
        self.ends.append(first + n)
        self.times.append(now)
        self.left.append(n)

    def take(self, first: int, n: int, now: float) -> tuple[float, float]:
        """Tasks `first` to `first + n - 1` are back at `now`: their summed
        turnaround, and the longest. (They may span parts.)"""
        firsts, ends, times, left = self.firsts, self.ends, self.times, self.left
        i = bisect_right(firsts, first) - 1
        total = 0.0
        longest = 0.0
        pos = first
        end = first + n
        while pos < end and 0 <= i < len(firsts) and firsts[i] <= pos < ends[i]:
            k = min(end, ends[i]) - pos
            waited = now - times[i]
            total += waited * k
            if waited > longest:
                longest = waited
            left[i] -= k
            pos += k
            if left[i] <= 0:
                del firsts[i], ends[i], times[i], left[i]
            else:
                i += 1
        return total, longest
