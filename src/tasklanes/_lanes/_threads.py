"""The blocking lane: sync code that waits, on worker threads shared by the process.

Layout. One `ThreadPool` per Scheduler owns at most ``capacity`` threads. A
batch is a `_ThreadJob`: a queue of ready tasks that the event loop keeps
filled (the running tasks plus about ``limit`` more), and a count of the threads
serving it. The pool's queue holds *jobs*, not tasks: a thread takes a job and runs
its ready tasks one after another until the job has none left, so a stream of
short tasks costs no event-loop round trip per task. A job is handed to at most
``limit`` threads at once, which is how a call's ``limit`` is enforced; the thread
count is how the lane's capacity is. When other jobs wait for a thread, a thread
passes its job to the back of the queue after each task, so jobs share threads fairly.

Outcomes go back through an `Inbox`: one loop wake-up per burst of them.

Timeouts and cancellation. A thread cannot be killed. A task that overruns is
reported as ``TaskTimeout`` at once, its ticket is marked so that
``check_cancelled()`` raises inside it, and what it returns later is discarded; its
thread (and its slot of the call's ``limit``) stays taken until it returns. A
cancelled batch drops its queued tasks, marks its running ones, and waits for their
threads to return before re-raising, so no work of the batch outlives the call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import anyio

from .._advice import Advisor, ThreadMeter
from .._batch import Batch
from .._cancel import Ticket, set_current_ticket
from .._errors import TaskTimeout, closed_error
from .._inbox import Inbox
from .._stats import LaneStats, Tally
from .._tasks import CachedCheck, check_sync_task
from ._base import Deadlines, LaneBase, Outcome, classify, count, log, pull, watch

__all__ = ["ThreadLane", "ThreadPool"]

_monotonic = time.monotonic


class _ThreadJob:
    """One batch as the worker threads see it."""

    __slots__ = (
        "admit", "cancelled", "closed", "inbox", "lock", "ready", "refused", "running",
        "serving", "started", "timed",
    )

    def __init__(self, inbox: Inbox, timed: bool) -> None:
        self.lock = threading.Lock()
        self.ready: deque[tuple[Ticket, Any, float]] = deque()
        self.running: dict[Ticket, float] = {}  # ticket -> start time (monotonic)
        #: With a timeout: ``(start, ticket)`` of tasks started since the watchdog
        #: last looked; it moves them into its deadline heap.
        self.started: list[tuple[float, Ticket]] = []
        self.timed = timed
        self.serving = 0  # threads holding, or queued to hold, this job
        self.cancelled = False
        self.closed = False  # its Scheduler was closed under it
        self.inbox = inbox
        #: limiter= with room: the ready tasks are not admitted yet; the thread that
        #: takes one admits it first (`admit()`, never waiting), in input order.
        self.admit = False
        #: A limiter refused the head task: threads leave the job alone until the
        #: loop has taken its ready tasks back (`_ThreadBatch._take_back`).
        self.refused = False


class ThreadPool:
    """Worker threads, started on demand up to ``capacity``, shared by every loop."""

    advisor: Advisor | None = None  # set by the lane (kind advice)

    def __init__(self, capacity: int, name: str = "tasklanes-blocking") -> None:
        self.capacity = capacity
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[_ThreadJob] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def offer(self, job: _ThreadJob, count: int) -> None:
        """Queue ``job`` for ``count`` more threads (any thread may call this)."""
        with self._cond:
            if self._closed:
                raise closed_error()
            self._jobs.extend([job] * count)
            short = len(self._jobs) - self._idle
            while short > 0 and len(self._threads) < self.capacity:
                thread = threading.Thread(
                    target=self._main, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
                short -= 1
            self._cond.notify(count)

    def _main(self) -> None:
        cond = self._cond
        jobs = self._jobs
        # kind advice measures each task's thread CPU time
        meter = ThreadMeter(self.advisor) if self.advisor is not None else None
        try:
            while True:
                with cond:
                    while not jobs:
                        if self._closed:
                            return
                        self._idle += 1
                        cond.wait()
                        self._idle -= 1
                    job = jobs.popleft()
                self._serve(job, meter)
        finally:
            if meter is not None:
                meter.close()

    def _serve(self, job: _ThreadJob, meter: ThreadMeter | None = None) -> None:
        """Run ``job``'s ready tasks until it has none, or until another job waits."""
        lock = job.lock
        ready = job.ready
        running = job.running
        inbox = job.inbox
        jobs = self._jobs
        while True:
            with lock:
                if job.cancelled or job.refused or not ready:
                    job.serving -= 1
                    return
                if job.admit and not ready[0][1].admit():
                    # No room in a limiter: the loop makes the task wait instead (no
                    # thread waits for a limiter).
                    job.refused = True
                    job.serving -= 1
                    inbox.poke_threadsafe()
                    return
                ticket, fn, queued_at = ready.popleft()
                start = _monotonic()
                running[ticket] = start
                if job.timed:
                    job.started.append((start, ticket))
            set_current_ticket(ticket)
            mark = meter.start() if meter is not None else None
            try:
                value = fn()
                ok = True
            except BaseException as exc:  # a thread must never die of its task
                value = exc
                ok = False
            finally:
                set_current_ticket(None)
            end = _monotonic()
            if mark is not None:  # advise kind="cpu" if it computed
                meter.stop(fn, mark)  # type: ignore[union-attr]
            with lock:
                del running[ticket]
            inbox.put((ticket, ok, value, start - queued_at, end - start))
            del value
            if jobs:  # someone else waits for a thread: take turns
                with lock:
                    if ready and not job.cancelled:
                        self._requeue(job)
                        return
                    job.serving -= 1
                    return

    def _requeue(self, job: _ThreadJob) -> None:
        with self._cond:
            jobs = self._jobs
            jobs.append(job)
            self._cond.notify()

    def close(self, deadline: float | None = None) -> None:
        """Stop the threads once they are idle, and wait for them (until `deadline`, a
        `time.monotonic()` value, if given: a thread still running a task then is left
        to end with it, as a daemon thread)."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def threads(self) -> int:
        return len(self._threads)


class ThreadLane(LaneBase):
    kind = "blocking"
    advisor: Advisor | None = None  # set by the Scheduler (kind advice)
    #: How long `close()` waits for the threads (a `time.monotonic()` deadline; None:
    #: until they return). Set by a close that has no thread to wait on it with.
    close_deadline: float | None = None
    closed_pool: ThreadPool | None = None

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.stats = LaneStats("blocking", capacity, live=self._live, threads=self._threads_alive)
        self.check_task = CachedCheck(self._check)

    def _live(self) -> tuple[int, int]:
        jobs = [run.job for run in self.runs()]
        return sum(len(j.running) for j in jobs), sum(len(j.ready) for j in jobs)

    def _threads_alive(self) -> int:
        """Threads alive, an overload figure for `stats()`."""
        pool: ThreadPool | None = self._resource
        return 0 if pool is None else sum(t.is_alive() for t in list(pool._threads))

    @staticmethod
    def _check(task: object, index: int) -> None:
        check_sync_task(task, index, "blocking")

    @property
    def pool(self) -> ThreadPool:
        """The lane's threads, started on first use; ``RuntimeError`` once closed."""
        return self.resource(self._make_pool)

    def _make_pool(self) -> ThreadPool:
        pool = ThreadPool(self.capacity)
        pool.advisor = self.advisor
        return pool

    def owns_current_thread(self) -> bool:
        """The calling thread is one of this lane's workers (see `_nested`)."""
        pool = self._resource
        return pool is not None and threading.current_thread() in pool._threads

    def shutdown(self, runs: list[Any], resource: Any) -> None:
        # Batches still running fail rather than wait for threads that are going away:
        # their queued tasks fail at once, their running ones are asked to stop
        # (check_cancelled() raises in them) and fail when they return.
        if runs:
            log.info("blocking lane closed under %d running batch(es): they fail", len(runs))
        for run in runs:
            job = run.job
            with job.lock:
                job.cancelled = job.closed = True
                dropped = list(job.ready)
                job.ready.clear()
                for ticket in job.running:
                    ticket.cancelled = True
            for ticket, _, _ in dropped:
                job.inbox.put((ticket, False, closed_error(ticket.index), 0.0, 0.0))
        if resource is not None:
            self.closed_pool = resource  # threads a bounded close may leave running
            resource.close(self.close_deadline)

    async def run(self, batch: Batch) -> None:
        runner = _ThreadBatch(self, batch)
        self.open_run(runner)
        try:
            await runner.run()
        finally:
            self.close_run(runner)


class _ThreadBatch:
    def __init__(self, lane: ThreadLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        self.inbox = Inbox(batch.loop)
        batch.wake = self.inbox.poke  # limiter=/retry=: a task is ready to pull
        self.job = _ThreadJob(self.inbox, timed=batch.timeout is not None)
        if batch.controls is not None:  # limiter= with room: the threads admit (`_serve`)
            lazy = getattr(batch.source, "lazy_admission", None)
            self.job.admit = lazy is not None and lazy() is not None
        self.outstanding = 0  # handed to the job and not yet returned by a thread
        self.buffer = batch.limit  # ready tasks kept beyond those running
        self.deadlines: Deadlines[Ticket] = Deadlines()
        self.tally = Tally()

    async def run(self) -> None:
        batch = self.batch
        stats = self.lane.stats
        try:
            pool = self.lane.pool
            if batch.timeout is None:
                await self._pump(pool)  # no watchdog, so no task group: a cheaper call
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        watch,
                        self.deadlines,
                        self._expired,
                        _monotonic,
                        batch.timeout,
                        self._take_starts,
                    )
                    await self._pump(pool)
                    tg.cancel_scope.cancel()
            if batch.stopping:
                await anyio.lowlevel.checkpoint()  # fail-fast: cleanup below runs cancelled
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cancel()
            raise
        finally:
            stats.merge(self.tally)

    async def _pump(self, pool: ThreadPool) -> None:
        """Keep the job fed and hand outcomes over until every task has one."""
        batch = self.batch
        await self._fill(pool)
        while self.outstanding:
            self._deliver(await self.inbox.get())
            if batch.stopping:
                break
            await self._fill(pool)

    async def _fill(self, pool: ThreadPool) -> None:
        """Pull tasks until ``limit`` run and ``buffer`` more are ready, then make sure
        enough threads serve the job."""
        batch = self.batch
        job = self.job
        if job.refused:
            self._take_back()
        want = batch.limit + self.buffer - self.outstanding
        if want <= 0:
            return
        start, tasks = await pull(batch, want, owed=self.outstanding > 0)
        if not tasks:
            return
        # (Admission happened in the pull: with limiter=, `batch.source` hands out only
        # tasks holding their limiters; see `_control`.)
        timeout = batch.timeout
        now = _monotonic()
        added = [(Ticket(index, timeout), fn, now) for index, fn in enumerate(tasks, start)]
        self.outstanding += len(added)
        with job.lock:
            job.ready.extend(added)
            threads = min(batch.limit - job.serving, len(job.ready))
            if threads > 0:
                job.serving += threads
        if threads > 0:
            pool.offer(job, threads)

    def _take_back(self) -> None:
        """A thread found no room in a limiter for the head task: hand the job's ready
        tasks (none admitted) back to the controls, which make them wait on the loop
        and admit every later task before handing it out."""
        job = self.job
        with job.lock:
            entries = list(job.ready)
            job.ready.clear()
            job.admit = job.refused = False
        self.outstanding -= len(entries)
        if entries:
            first = entries[0][0].index
            self.batch.source.not_admitted(  # type: ignore[attr-defined]
                first, [fn for _, fn, _ in entries]
            )

    def _deliver(self, items: list[Any]) -> None:
        batch = self.batch
        tally = self.tally
        emit = batch.emit
        deadlines = self.deadlines
        self.outstanding -= len(items)
        for ticket, ok, value, waited, ran in items:
            tally.wait(waited)
            tally.run(ran)
            deadlines.remove(ticket)
            if ticket.timed_out:
                # Reported when it overran; what it returns now is discarded. (Hook:
                # the task is really over only now, with its thread free again.)
                log.debug("blocking task %d returned %.3f s after it timed out", ticket.index,
                          max(ran - (ticket.timeout or 0.0), 0.0))
                continue
            if ticket.cancelled:
                if self.job.closed and not batch.stopping:
                    tally.failed += 1
                    emit(ticket.index, False, closed_error(ticket.index))
                    continue
                tally.cancelled += 1
                continue
            count(tally, classify(ok, value))
            emit(ticket.index, ok, value)

    async def _cancel(self) -> None:
        """Drop the queued tasks, ask the running ones to stop, wait for their threads."""
        job = self.job
        with job.lock:
            job.cancelled = True
            dropped = len(job.ready)
            job.ready.clear()
            for ticket in job.running:
                ticket.cancelled = True
        self.outstanding -= dropped
        self.tally.cancelled += dropped
        while self.outstanding > 0:
            self._deliver(await self.inbox.get())

    def _take_starts(self) -> None:
        """Move the starts the threads reported into the deadline heap."""
        job = self.job
        with job.lock:
            started, job.started = job.started, []
        timeout = self.batch.timeout
        assert timeout is not None
        add = self.deadlines.add
        for start, ticket in started:
            add(start + timeout, ticket)

    def _expired(self, ticket: Ticket) -> None:
        """Report an overrunning task at once and ask it to stop."""
        job = self.job
        with job.lock:
            if ticket not in job.running or ticket.timed_out:
                return  # it returned meanwhile: its outcome is on its way
            ticket.timed_out = ticket.cancelled = True
        count(self.tally, Outcome.TIMED_OUT)
        self.batch.emit(ticket.index, False, TaskTimeout(ticket.index, ticket.timeout))
