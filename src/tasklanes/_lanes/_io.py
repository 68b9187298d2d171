"""The io lane: coroutines on the caller's event loop.

A batch runs as a pool of at most ``limit`` worker tasks in one task group, each
pulling the next task from the (lazy) input and awaiting it. There is no task, no
semaphore and no cancel scope per item: those cost more than a trivial coroutine
does. Per-task timeouts use one watchdog per batch that knows each worker's current
deadline and cancels only the overrunning worker's long-lived cancel scope; that
worker reports ``TaskTimeout`` and carries on under a fresh scope.

Capacity (``io_limit``) is per event loop: a worker holds one slot of its loop for
its whole life, so the slot costs one acquire per worker, not per task.
"""

from __future__ import annotations

import math
import threading
from types import CoroutineType
from typing import Any

import anyio

from .._backend import worker_group
from .._batch import Batch
from .._errors import TaskTimeout
from .._stats import LaneStats, Tally
from .._tasks import END, WAIT, CachedCheck, check_io_task, close_if_coroutine, describe

__all__ = ["IoLane"]

INF = math.inf
_FLUSH_EVERY = 512  # completions between merges of a batch's tally into the lane's stats


class _NoScope:
    """Stands in for a cancel scope when a batch has no timeout."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SCOPE = _NoScope()


class _Worker:
    __slots__ = ("deadline", "index", "scope", "timed_out")

    def __init__(self) -> None:
        self.deadline = INF
        self.index = -1
        self.scope: anyio.CancelScope | None = None
        self.timed_out = False


class IoLane:
    kind = "io"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stats = LaneStats("io", capacity)
        self._limiters: dict[object, tuple[anyio.CapacityLimiter, list[int]]] = {}
        self._lock = threading.Lock()
        self.check_task = CachedCheck(check_io_task)

    def close(self) -> None:
        pass  # nothing outlives a batch on this lane

    def _limiter(self, key: object) -> tuple[anyio.CapacityLimiter, list[int]]:
        # One CapacityLimiter per event loop, dropped when its last user leaves: a
        # limiter is bound to the loop it was created on.
        with self._lock:
            entry = self._limiters.get(key)
            if entry is None:
                entry = (anyio.CapacityLimiter(self.capacity), [0])
                self._limiters[key] = entry
            entry[1][0] += 1
            return entry

    def _unref(self, key: object, entry: tuple[anyio.CapacityLimiter, list[int]]) -> None:
        with self._lock:
            entry[1][0] -= 1
            if entry[1][0] == 0 and self._limiters.get(key) is entry:
                del self._limiters[key]

    async def run(self, batch: Batch) -> None:
        key = batch.loop.key
        entry = self._limiter(key)
        try:
            await _IoBatch(self, batch, entry[0]).run()
        finally:
            self._unref(key, entry)


class _IoBatch:
    def __init__(self, lane: IoLane, batch: Batch, limiter: anyio.CapacityLimiter) -> None:
        self.lane = lane
        self.batch = batch
        self.limiter = limiter
        self.workers: set[_Worker] = set()
        self.nworkers = 0
        target = batch.limit
        if batch.source.size is not None:
            target = min(target, batch.source.size)
        self.target = max(target, 1)
        self.tally = Tally()
        self.spawn: Any = None

    async def run(self) -> None:
        stats = self.lane.stats
        try:
            async with anyio.create_task_group() as outer:
                if self.batch.timeout is not None:
                    outer.start_soon(self._watchdog, self.batch.timeout)
                async with worker_group(self.batch.loop.backend) as spawn:
                    self.spawn = spawn
                    self._spawn()
                outer.cancel_scope.cancel()
        finally:
            stats.merge(self.tally)

    def _spawn(self) -> None:
        self.nworkers += 1
        self.spawn(self._worker)

    async def _worker(self) -> None:
        batch = self.batch
        source = batch.source
        stats = self.lane.stats
        if batch.stopping:
            return
        # Pull the first task before taking a capacity slot, so the time spent waiting
        # for the slot is this task's queue lag.
        try:
            item = source.next_nowait()
            if item is WAIT:
                item = await source.next()
        except Exception as exc:
            batch.fail(exc)
            return
        if item is END:
            return
        if self.nworkers < self.target:
            self._spawn()
        token = object()
        try:
            self.limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            # The loop's io capacity is taken by other batches: wait for a slot.
            clock = batch.loop.clock
            t0 = clock()
            stats.adjust(waiting=1)
            try:
                await self.limiter.acquire_on_behalf_of(token)
            except BaseException:
                close_if_coroutine(item[1])
                self.tally.cancelled += 1
                raise
            finally:
                stats.adjust(waiting=-1)
            self.tally.wait(clock() - t0)
        stats.adjust(running=1)
        worker = _Worker()
        self.workers.add(worker)
        try:
            await self._work(worker, item)
        finally:
            self.workers.discard(worker)
            stats.adjust(running=-1)
            self.limiter.release_on_behalf_of(token)

    def _finish(self, index: int, ok: bool, value: Any) -> None:
        """Hand one outcome over (off the hot path: failures and timeouts)."""
        if ok:
            self.tally.completed += 1
        elif not isinstance(value, TaskTimeout):
            self.tally.failed += 1
        self.batch.emit(index, ok, value)

    async def _work(self, worker: _Worker, item: Any) -> None:
        """Run tasks until the input ends; ``item`` is a first task already pulled.

        This is the hot loop: what it needs is held in locals, a task costs two clock
        reads, and the run-time figures are summed locally and merged into the tally
        now and then. Each pass of the outer loop is one long-lived cancel scope; the
        watchdog cancels it when the running task overruns, and the next pass starts
        a fresh one.
        """
        batch = self.batch
        source = batch.source
        next_nowait = source.next_nowait
        clock = batch.loop.clock
        timeout = batch.timeout
        emit = batch.emit
        tally = self.tally
        completed = 0
        run_count = 0
        run_total = 0.0
        run_max = 0.0
        index = -1
        try:
            while item is not END:
                # A cancel scope costs ~14 us to create: only workers that may time out
                # get one, and then one per worker (per timeout), not one per task.
                with anyio.CancelScope() if timeout is not None else _NO_SCOPE as scope:
                    worker.scope = scope
                    while True:
                        if item is None:
                            if batch.stopping:
                                item = END
                                break
                            try:
                                item = next_nowait()
                                if item is WAIT and batch.controls is not None:
                                    # A wait for a limiter or a retry holds no io slot:
                                    # a fresh worker (which pulls before taking a slot)
                                    # waits instead of this one.
                                    self.spawn(self._worker)
                                    item = END
                                    break
                                if item is WAIT:
                                    item = await source.next()
                            except Exception as exc:
                                batch.fail(exc)
                                item = END
                                break
                            if item is END:
                                break
                            if self.nworkers < self.target:
                                self._spawn()
                        index, task = item
                        item = None
                        worker.index = index
                        start = clock()
                        if timeout is not None:
                            worker.deadline = start + timeout
                        try:
                            if type(task) is CoroutineType:
                                value = await task
                            elif callable(task):
                                awaitable = task()
                                if type(awaitable) is not CoroutineType and not hasattr(
                                    awaitable, "__await__"
                                ):
                                    raise TypeError(
                                        f"task {index} ({describe(task)}) returned "
                                        f"{describe(awaitable)}, not an awaitable: kind='io' "
                                        "runs async code; use kind='blocking' or kind='cpu' "
                                        "for sync code"
                                    )
                                value = await awaitable
                            else:
                                value = await task
                        except Exception as exc:
                            worker.deadline = INF
                            elapsed = clock() - start
                            run_count += 1
                            run_total += elapsed
                            if elapsed > run_max:
                                run_max = elapsed
                            if worker.timed_out:
                                break  # overran, then raised on its way out: a timeout
                            self._finish(index, False, exc)
                        except BaseException:
                            if not worker.timed_out:  # the batch or its caller was cancelled
                                tally.cancelled += 1
                            raise
                        else:
                            worker.deadline = INF
                            elapsed = clock() - start
                            run_count += 1
                            run_total += elapsed
                            if elapsed > run_max:
                                run_max = elapsed
                            if worker.timed_out:
                                break  # overran, swallowed the cancellation: a timeout
                            completed += 1
                            emit(index, True, value)
                            if completed >= _FLUSH_EVERY:
                                tally.completed += completed
                                tally.run_count += run_count
                                tally.run_total += run_total
                                tally.run_max = max(tally.run_max, run_max)
                                completed = run_count = 0
                                run_total = run_max = 0.0
                                self.lane.stats.merge(tally)
                if worker.timed_out:
                    # The watchdog cancelled this worker's scope: the task overran.
                    worker.timed_out = False
                    worker.deadline = INF
                    tally.timed_out += 1
                    self._finish(index, False, TaskTimeout(index, timeout))
        finally:
            tally.completed += completed
            tally.run_count += run_count
            tally.run_total += run_total
            tally.run_max = max(tally.run_max, run_max)

    async def _watchdog(self, timeout: float) -> None:
        """Cancel the worker whose task overruns, and only that one.

        A deadline set after a scan is at least ``timeout`` away, so sleeping until the
        earliest known deadline, or ``timeout`` at most, never misses one.
        """
        clock = self.batch.loop.clock
        while True:
            now = clock()
            soonest = now + timeout
            for worker in list(self.workers):
                deadline = worker.deadline
                if deadline <= now:
                    worker.deadline = INF
                    worker.timed_out = True
                    if worker.scope is not None:
                        worker.scope.cancel()
                elif deadline < soonest:
                    soonest = deadline
            await anyio.sleep(max(soonest - now, 0.0))
