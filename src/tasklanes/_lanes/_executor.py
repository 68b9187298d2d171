"""The cpu lane on a foreign ``concurrent.futures.Executor`` (a Dask cluster, say).

tasklanes' own process pool (``_cpu.py``) is the default cpu engine. This lane is
for ``Scheduler(cpu_executor=...)``: it submits each task with ``executor.submit``,
at most ``limit`` in flight per call, and hands completions back through an
`Inbox`. What an executor cannot do, this lane cannot either: a task that
already runs cannot be stopped. A timeout is reported at once and the task's
future is cancelled if it has not started; if it has, its result is discarded when
it arrives. Cancelling the caller cancels the futures that have not started and
does not wait for the others. The executor is the caller's: closing the lane
refuses new batches and leaves the executor running.
"""

from __future__ import annotations

import pickle
import time
from concurrent.futures import Executor, Future
from typing import Any

import anyio

from .._batch import Batch
from .._errors import TaskTimeout
from .._inbox import Inbox
from .._stats import LaneStats, Tally
from .._tasks import CachedCheck, check_cpu_task
from ._base import Deadlines, LaneBase, Outcome, classify, count, pull, watch

__all__ = ["ExecutorLane"]

_PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def pickle_error(index: int, task: object, exc: BaseException) -> TypeError:
    err = TypeError(f"task {index} ({task!r:.80}) could not be pickled for kind='cpu': {exc}")
    err.__cause__ = exc
    return err


class ExecutorLane(LaneBase):
    kind = "cpu"

    def __init__(self, executor: Executor, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.executor = executor
        self.stats = LaneStats("cpu", capacity, live=self._live)
        # Dask pickles with cloudpickle, which sends lambdas too; plain pickle does not.
        module = type(executor).__module__
        self._strict = not module.startswith(("distributed", "dask"))
        self.check_task = CachedCheck(self._check)

    def _live(self) -> tuple[int, int]:
        return sum(len(b.futures) for b in self.runs()), 0

    def _check(self, task: object, index: int) -> None:
        check_cpu_task(task, index, strict_pickle=self._strict)

    def does_not_pickle(self, task: object) -> bool:
        """Whether ``task`` itself fails to pickle the way this executor sends it.

        Asked only of a task whose future failed with an error a pickler raises, so
        that a user's own ``TypeError`` reaches the caller unchanged: only a task that
        really does not pickle becomes the ``TypeError`` naming its index.
        """
        dumps = pickle.dumps
        if not self._strict:
            try:
                import cloudpickle  # type: ignore[import-untyped]
            except ImportError:
                return False
            dumps = cloudpickle.dumps
        try:
            dumps(task)
        except Exception:
            return True
        return False

    async def run(self, batch: Batch) -> None:
        runner = _ExecutorBatch(self, batch)
        self.open_run(runner)
        try:
            await runner.run()
        finally:
            self.close_run(runner)
            self.stats.merge(runner.tally)


class _ExecutorBatch:
    def __init__(self, lane: ExecutorLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        self.inbox = Inbox(batch.loop)
        batch.wake = self.inbox.poke  # limiter=/retry=: a task is ready to pull
        self.futures: dict[Future[Any], tuple[int, float, object]] = {}
        self.timed_out: set[Future[Any]] = set()
        self.deadlines: Deadlines[Future[Any]] = Deadlines()
        self.tally = Tally()

    async def run(self) -> None:
        batch = self.batch
        try:
            async with anyio.create_task_group() as tg:
                if batch.timeout is not None:
                    tg.start_soon(
                        watch, self.deadlines, self._expired, time.monotonic, batch.timeout
                    )
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
        submit = self.lane.executor.submit
        put = self.inbox.put
        timeout = batch.timeout
        start, tasks = await pull(batch, batch.limit - len(self.futures), owed=bool(self.futures))
        for index, task in enumerate(tasks, start):
            try:
                future = submit(task)
            except pickle.PicklingError as exc:  # an executor that pickles at submit
                batch.fail(pickle_error(index, task, exc))
                return
            started = time.monotonic()
            self.futures[future] = (index, started, task)
            if timeout is not None:
                self.deadlines.add(started + timeout, future)
            future.add_done_callback(put)

    def _deliver(self, futures: list[Future[Any]]) -> None:
        tally = self.tally
        emit = self.batch.emit
        for future in futures:
            entry = self.futures.pop(future, None)
            if entry is None:
                continue
            index, started, task = entry
            self.deadlines.remove(future)
            tally.run(time.monotonic() - started)
            if future in self.timed_out:
                self.timed_out.discard(future)
                continue
            if future.cancelled():
                tally.cancelled += 1
                continue
            exc = future.exception()
            if exc is None:
                ok, value = True, future.result()
            else:
                ok, value = False, exc
                # Most executors pickle in the background, so a task that does not
                # pickle fails through its future, with the pickler's error; a user's
                # TypeError looks the same, so ask the task itself.
                if isinstance(exc, _PICKLING_ERRORS) and self.lane.does_not_pickle(task):
                    value = pickle_error(index, task, exc)
            count(tally, classify(ok, value))
            emit(index, ok, value)

    def _expired(self, future: Future[Any]) -> None:
        entry = self.futures.get(future)
        if entry is None:
            return
        index = entry[0]
        self.timed_out.add(future)
        future.cancel()
        count(self.tally, Outcome.TIMED_OUT)
        self.batch.emit(index, False, TaskTimeout(index, self.batch.timeout))
