"""The cpu lane on a foreign ``concurrent.futures.Executor`` (a Dask cluster, say).

tasklanes' own process pool (``_cpu.py``) is the default cpu engine. This lane is
for ``Scheduler(cpu_executor=...)``: it submits each task with ``executor.submit``,
at most ``limit`` in flight per call, and hands completions back through an
`Inbox`. What an executor cannot do, this lane cannot either: a task that
already runs cannot be stopped. A timeout is reported at once and the task's
future is cancelled if it has not started; if it has, its result is discarded when
it arrives. Cancelling the caller cancels the futures that have not started and
does not wait for the others.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any

import anyio

from .._batch import Batch
from .._errors import TaskTimeout
from .._stats import LaneStats, Tally
from .._tasks import END, WAIT, CachedCheck, check_sync_task
from ._inbox import Inbox

__all__ = ["ExecutorLane", "check_cpu_task"]


def check_cpu_task(task: object, index: int, *, strict_pickle: bool = True) -> None:
    """Check a cpu task; with ``strict_pickle``, refuse what plain pickle cannot send.

    Lambdas and closures are the usual mistake: pickle sends functions by name, so
    only module-level functions travel to another process.
    """
    check_sync_task(task, index, "cpu")
    if not strict_pickle:
        return
    from .._call import unwrap_callable

    fn = unwrap_callable(task)
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"task {index} calls {qualname}, which cannot be sent to a worker process: "
            "kind='cpu' needs a module-level function (def at the top of a module), "
            "wrapped with call(fn, *args) or functools.partial; lambdas and functions "
            "defined inside other functions do not pickle"
        )


def pickle_error(index: int, task: object, exc: BaseException) -> TypeError:
    err = TypeError(f"task {index} ({task!r:.80}) could not be pickled for kind='cpu': {exc}")
    err.__cause__ = exc
    return err


def default_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def executor_capacity(executor: Executor) -> int:
    """How many tasks to keep in flight on ``executor`` when ``cpu_limit`` is None.

    A ``concurrent.futures`` pool says (``_max_workers``). A Dask executor gets twice
    its cluster's worker threads: each task pays a round trip to the cluster's
    scheduler, so one task per thread would leave threads idle between tasks.
    Otherwise, the CPUs this process may use.
    """
    workers = getattr(executor, "_max_workers", None)
    if isinstance(workers, int) and workers >= 1:
        return workers
    client = getattr(executor, "_client", None)
    if client is not None and type(executor).__module__.startswith("distributed"):
        try:
            threads = int(sum(client.nthreads().values()))
        except Exception:  # an unreachable cluster: fall back, the tasks will say why
            threads = 0
        if threads >= 1:
            return 2 * threads
    return default_cpu_count()


class ExecutorLane:
    kind = "cpu"

    def __init__(
        self, executor: Executor, capacity: int | None = None, *, own: bool = False
    ) -> None:
        if capacity is None:
            capacity = executor_capacity(executor)
        self.capacity = capacity
        self.executor = executor
        self.stats = LaneStats("cpu", capacity, live=self._live)
        self._own = own
        self._lock = threading.Lock()
        self._inflight: set[_ExecutorBatch] = set()
        # Dask pickles with cloudpickle, which sends lambdas too; plain pickle does not.
        module = type(executor).__module__
        self._strict = not module.startswith(("distributed", "dask"))
        self.check_task = CachedCheck(self._check)

    def _live(self) -> tuple[int, int]:
        with self._lock:
            return sum(len(b.futures) for b in self._inflight), 0

    def _check(self, task: object, index: int) -> None:
        check_cpu_task(task, index, strict_pickle=self._strict)

    def close(self) -> None:
        if self._own:
            self.executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, batch: Batch) -> None:
        runner = _ExecutorBatch(self, batch)
        with self._lock:
            self._inflight.add(runner)
        try:
            await runner.run()
        finally:
            with self._lock:
                self._inflight.discard(runner)
            self.stats.merge(runner.tally)


class _ExecutorBatch:
    def __init__(self, lane: ExecutorLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        self.inbox = Inbox(batch.loop)
        self.futures: dict[Future[Any], tuple[int, float]] = {}
        self.timed_out: set[Future[Any]] = set()
        self.tally = Tally()

    async def run(self) -> None:
        batch = self.batch
        try:
            async with anyio.create_task_group() as tg:
                if batch.timeout is not None:
                    tg.start_soon(self._watchdog, batch.timeout)
                await self._fill()
                while self.futures:
                    self._deliver(await self.inbox.get())
                    if batch.stopping:
                        break
                    await self._fill()
                tg.cancel_scope.cancel()
            if batch.stopping:
                await anyio.lowlevel.checkpoint()
        except BaseException:
            for future in self.futures:
                if future.cancel():
                    self.tally.cancelled += 1
            raise

    async def _fill(self) -> None:
        batch = self.batch
        source = batch.source
        submit = self.lane.executor.submit
        put = self.inbox.put
        while len(self.futures) < batch.limit and not batch.stopping:
            try:
                item = source.next_nowait()
                if item is WAIT:
                    if self.futures and source.blocked():
                        return  # outcomes owed open the gate: deliver them first
                    item = await source.next()
            except Exception as exc:
                batch.fail(exc)
                return
            if item is END:
                return
            index, task = item
            try:
                future = submit(task)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                batch.fail(pickle_error(index, task, exc))
                return
            self.futures[future] = (index, time.monotonic())
            future.add_done_callback(put)

    def _deliver(self, futures: list[Future[Any]]) -> None:
        tally = self.tally
        emit = self.batch.emit
        for future in futures:
            entry = self.futures.pop(future, None)
            if entry is None:
                continue
            index, started = entry
            tally.run(time.monotonic() - started)
            if future in self.timed_out:
                self.timed_out.discard(future)
                continue
            if future.cancelled():
                tally.cancelled += 1
                continue
            exc = future.exception()
            if exc is None:
                tally.completed += 1
                emit(index, True, future.result())
            else:
                if isinstance(exc, (pickle.PicklingError,)) or "pickle" in str(exc).lower():
                    exc = pickle_error(index, "task", exc)
                tally.failed += 1
                emit(index, False, exc)

    async def _watchdog(self, timeout: float) -> None:
        while True:
            now = time.monotonic()
            soonest = now + timeout
            for future, (index, started) in list(self.futures.items()):
                if future in self.timed_out:
                    continue
                deadline = started + timeout
                if deadline <= now:
                    self.timed_out.add(future)
                    future.cancel()
                    self.tally.timed_out += 1
                    self.batch.emit(index, False, TaskTimeout(index, timeout))
                elif deadline < soonest:
                    soonest = deadline
            await anyio.sleep(max(soonest - now, 0.0))
