"""The blocking lane: sync code that waits, on worker threads shared by the process.

Layout. One :class:`ThreadPool` per Scheduler owns at most ``capacity`` threads. A
batch is a :class:`_ThreadJob`: a queue of ready tasks that the event loop keeps
filled (the running tasks plus about ``limit`` more), and a count of the threads
serving it. The pool's queue holds *jobs*, not tasks: a thread takes a job and runs
its ready tasks one after another until the job has none left, so a stream of
short tasks costs no event-loop round trip per task. A job is handed to at most
``limit`` threads at once, which is how a call's ``limit`` is enforced; the thread
count is how the lane's capacity is. When other jobs wait for a thread, a thread
passes its job to the back of the queue after each task, so jobs share threads fairly.

Outcomes go back through an :class:`Inbox`: one loop wake-up per burst of them.

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

from .._batch import Batch
from .._cancel import Ticket, set_current_ticket
from .._errors import TaskTimeout, closed_error
from .._stats import LaneStats, Tally
from .._tasks import END, WAIT, CachedCheck, check_sync_task
from ._inbox import Inbox

__all__ = ["ThreadLane", "ThreadPool"]

_monotonic = time.monotonic


class _ThreadJob:
    """One batch as the worker threads see it."""

    __slots__ = ("cancelled", "closed", "inbox", "lock", "ready", "running", "serving")

    def __init__(self, inbox: Inbox) -> None:
        self.lock = threading.Lock()
        self.ready: deque[tuple[Ticket, Any, float]] = deque()
        self.running: dict[Ticket, float] = {}  # ticket -> start time (monotonic)
        self.serving = 0  # threads holding, or queued to hold, this job
        self.cancelled = False
        self.closed = False  # its Scheduler was closed under it
        self.inbox = inbox


class ThreadPool:
    """Worker threads, started on demand up to ``capacity``, shared by every loop."""

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
                raise RuntimeError("this Scheduler is closed")
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
        while True:
            with cond:
                while not jobs:
                    if self._closed:
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                job = jobs.popleft()
            self._serve(job)

    def _serve(self, job: _ThreadJob) -> None:
        """Run ``job``'s ready tasks until it has none, or until another job waits."""
        lock = job.lock
        ready = job.ready
        running = job.running
        inbox = job.inbox
        jobs = self._jobs
        while True:
            with lock:
                if job.cancelled or not ready:
                    job.serving -= 1
                    return
                ticket, fn, queued_at = ready.popleft()
                start = _monotonic()
                running[ticket] = start
            set_current_ticket(ticket)
            try:
                value = fn()
                ok = True
            except BaseException as exc:  # a thread must never die of its task
                value = exc
                ok = False
            finally:
                set_current_ticket(None)
            end = _monotonic()
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

    def close(self) -> None:
        """Stop the threads once they are idle, and wait for them."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    @property
    def threads(self) -> int:
        return len(self._threads)


class ThreadLane:
    kind = "blocking"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stats = LaneStats("blocking", capacity, live=self._live)
        self._pool: ThreadPool | None = None
        self._lock = threading.Lock()
        self._jobs: set[_ThreadJob] = set()
        self.check_task = CachedCheck(self._check)

    def _live(self) -> tuple[int, int]:
        with self._lock:
            jobs = list(self._jobs)
        return sum(len(j.running) for j in jobs), sum(len(j.ready) for j in jobs)

    @staticmethod
    def _check(task: object, index: int) -> None:
        check_sync_task(task, index, "blocking")

    @property
    def pool(self) -> ThreadPool:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPool(self.capacity)
                pool = self._pool
        return pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            jobs = list(self._jobs)
        # Batches still running fail rather than wait for threads that are going away:
        # their queued tasks fail at once, their running ones are asked to stop
        # (check_cancelled() raises in them) and fail when they return.
        for job in jobs:
            with job.lock:
                job.cancelled = job.closed = True
                dropped = list(job.ready)
                job.ready.clear()
                for ticket in job.running:
                    ticket.cancelled = True
            for ticket, _, _ in dropped:
                job.inbox.put((ticket, False, closed_error(ticket.index), 0.0, 0.0))
        if pool is not None:
            pool.close()

    async def run(self, batch: Batch) -> None:
        runner = _ThreadBatch(self, batch)
        with self._lock:
            self._jobs.add(runner.job)
        try:
            await runner.run()
        finally:
            with self._lock:
                self._jobs.discard(runner.job)


class _ThreadBatch:
    def __init__(self, lane: ThreadLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        self.inbox = Inbox(batch.loop)
        batch.wake = self.inbox.poke
        self.job = _ThreadJob(self.inbox)
        self.outstanding = 0  # handed to the job and not yet returned by a thread
        self.buffer = batch.limit  # ready tasks kept beyond those running
        self.tally = Tally()

    async def run(self) -> None:
        batch = self.batch
        stats = self.lane.stats
        pool = self.lane.pool
        try:
            if batch.timeout is None:
                await self._pump(pool)  # no watchdog, so no task group: a cheaper call
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watchdog, batch.timeout)
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
        source = batch.source
        job = self.job
        want = batch.limit + self.buffer
        added: list[tuple[Ticket, Any, float]] = []
        timeout = batch.timeout
        while self.outstanding + len(added) < want and not batch.stopping:
            try:
                item = source.next_nowait()
                if item is WAIT:
                    # Never wait for the gate while outcomes are owed: they are what
                    # opens it (an ordered amap waits for its oldest result), and they
                    # are only handed over once this returns.
                    if added or (self.outstanding and source.blocked()):
                        break  # hand over what we have before waiting for more
                    item = await source.next()
            except Exception as exc:
                batch.fail(exc)
                break
            if item is END:
                break
            index, fn = item
            added.append((Ticket(index, timeout), fn, _monotonic()))
        if not added:
            return
        self.outstanding += len(added)
        with job.lock:
            job.ready.extend(added)
            count = min(batch.limit - job.serving, len(job.ready))
            if count > 0:
                job.serving += count
        if count > 0:
            pool.offer(job, count)

    def _deliver(self, items: list[Any]) -> None:
        batch = self.batch
        tally = self.tally
        emit = batch.emit
        self.outstanding -= len(items)
        for ticket, ok, value, waited, ran in items:
            tally.wait(waited)
            tally.run(ran)
            if ticket.timed_out:
                continue  # reported when it overran; what it returns now is discarded
            if ticket.cancelled:
                if self.job.closed and not batch.stopping:
                    tally.failed += 1
                    emit(ticket.index, False, closed_error(ticket.index))
                    continue
                tally.cancelled += 1
                continue
            if ok:
                tally.completed += 1
            else:
                tally.failed += 1
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

    async def _watchdog(self, timeout: float) -> None:
        """Report overrunning tasks at once; see the io lane's watchdog for the timing."""
        job = self.job
        batch = self.batch
        while True:
            now = _monotonic()
            soonest = now + timeout
            with job.lock:
                running = list(job.running.items())
            for ticket, start in running:
                deadline = start + timeout
                if deadline <= now:
                    if not ticket.timed_out:
                        ticket.timed_out = ticket.cancelled = True
                        self.tally.timed_out += 1
                        batch.emit(ticket.index, False, TaskTimeout(ticket.index, timeout))
                elif deadline < soonest:
                    soonest = deadline
            await anyio.sleep(max(soonest - now, 0.0))
