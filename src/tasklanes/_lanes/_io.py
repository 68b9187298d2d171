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

from .._batch import Batch
from .._errors import TaskTimeout
from .._stats import LaneStats, Tally
from .._tasks import END, WAIT, check_io_task, close_if_coroutine, describe

__all__ = ["IoLane"]

INF = math.inf
_FLUSH_EVERY = 512  # completions between merges of a batch's tally into the lane's stats


class _Worker:
    __slots__ = ("deadline", "index", "scope")

    def __init__(self) -> None:
        self.deadline = INF
        self.index = -1
        self.scope: anyio.CancelScope | None = None


class IoLane:
    kind = "io"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stats = LaneStats("io", capacity)
        self._limiters: dict[object, tuple[anyio.CapacityLimiter, list[int]]] = {}
        self._lock = threading.Lock()

    def check_task(self, task: object, index: int) -> None:
        check_io_task(task, index)

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
        self.tg: Any = None

    async def run(self) -> None:
        stats = self.lane.stats
        try:
            async with anyio.create_task_group() as outer:
                if self.batch.timeout is not None:
                    outer.start_soon(self._watchdog, self.batch.timeout)
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    self._spawn()
                outer.cancel_scope.cancel()
        finally:
            stats.merge(self.tally)

    def _spawn(self) -> None:
        self.nworkers += 1
        self.tg.start_soon(self._worker)

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
        clock = batch.loop.clock
        token = object()
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
            while item is not END:
                with anyio.CancelScope() as scope:
                    worker.scope = scope
                    item = await self._work(worker, item)
                if scope.cancel_called:
                    # The watchdog cancelled this worker: its task overran its timeout.
                    # A fresh scope takes over; the worker is cheap to keep.
                    worker.deadline = INF
                    self._finish(worker.index, False, TaskTimeout(worker.index, batch.timeout))
                    self.tally.timed_out += 1
                    item = None
        finally:
            self.workers.discard(worker)
            stats.adjust(running=-1)
            self.limiter.release_on_behalf_of(token)

    def _finish(self, index: int, ok: bool, value: Any) -> None:
        tally = self.tally
        if ok:
            tally.completed += 1
        elif not isinstance(value, TaskTimeout):
            tally.failed += 1
        self.batch.emit(index, ok, value)
        if tally.run_count >= _FLUSH_EVERY:
            self.lane.stats.merge(tally)

    async def _work(self, worker: _Worker, item: Any) -> Any:
        """Run tasks until the input ends (return ``END``) or a timeout (cancelled).

        ``item`` is a task already pulled, or ``None``. This is the hot loop: every
        attribute it needs is a local, and a task costs one clock read at each end.
        """
        batch = self.batch
        source = batch.source
        next_nowait = source.next_nowait
        clock = batch.loop.clock
        timeout = batch.timeout
        tally = self.tally
        finish = self._finish
        scope = worker.scope
        assert scope is not None
        while True:
            if item is None:
                if batch.stopping:
                    return END
                try:
                    item = next_nowait()
                    if item is WAIT:
                        item = await source.next()
                except Exception as exc:
                    batch.fail(exc)
                    return END
                if item is END:
                    return END
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
                    if type(awaitable) is not CoroutineType and not hasattr(awaitable, "__await__"):
                        raise TypeError(
                            f"task {index} ({describe(task)}) returned {describe(awaitable)}, "
                            "not an awaitable: kind='io' runs async code; use kind='blocking' "
                            "or kind='cpu' for sync code"
                        )
                    value = await awaitable
                else:
                    value = await task
            except Exception as exc:
                worker.deadline = INF
                tally.run(clock() - start)
                if scope.cancel_called:
                    return None  # overran, then raised on its way out: a timeout
                finish(index, False, exc)
            except BaseException:
                if not scope.cancel_called:  # the batch or its caller was cancelled
                    tally.cancelled += 1
                raise
            else:
                worker.deadline = INF
                tally.run(clock() - start)
                if scope.cancel_called:
                    return None  # overran, swallowed the cancellation: still a timeout
                finish(index, True, value)

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
                    if worker.scope is not None:
                        worker.scope.cancel()
                elif deadline < soonest:
                    soonest = deadline
            await anyio.sleep(max(soonest - now, 0.0))
