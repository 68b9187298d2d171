"""The cpu lane on a foreign ``concurrent.futures.Executor`` (a Dask cluster, say).

tasklanes' own process pool (``_cpu.py``) is the default cpu engine. This lane is
for ``Scheduler(cpu_executor=...)``: at most ``limit`` tasks in flight per call,
completions handed back through an `Inbox`. Two ways to submit:

- any executor (`_ExecutorBatch`): one ``executor.submit`` per task;
- a Dask ``ClientExecutor`` (`_DaskBatch`): the executor's client directly, so that
  tasks and results travel in bulk. Each refill of the window (at least half of
  it) is one ``client.map`` (one message to the cluster's scheduler); on the
  client's own event loop, ``distributed.as_completed`` says which futures finished,
  and the results of those that finished together come in one ``client.gather``.
  Going through ``ClientExecutor.submit`` costs a message per task *and* a result
  fetch per task (its ``concurrent.futures`` wrapper): 2.5-2.7x ``client.map`` +
  ``gather`` for 200 trivial tasks, against 1.0-1.25x this way.
  Each task is still its own Dask future: its own result or error, timeout and
  cancellation. ``distributed`` is imported only once such an executor is used.

What an executor cannot do, this lane cannot either: a task that already runs
cannot be stopped. A timeout is reported at once and the task's future is
cancelled if it has not started; if it has, its result is discarded when it
arrives. Cancelling the caller cancels the futures that have not started and does
not wait for the others. The executor is the caller's: closing the lane refuses
new batches and leaves the executor running.
"""

from __future__ import annotations

import enum
import operator
import pickle
import time
from concurrent.futures import Executor, Future
from typing import Any

import anyio

from .._batch import Batch
from .._defaults import dask_threads, default_cpu_count
from .._errors import TaskTimeout
from .._inbox import Inbox
from .._stats import LaneStats, Tally
from .._tasks import CachedCheck, check_cpu_task
from ._base import Deadlines, LaneBase, Outcome, classify, count, log, pull, watch

__all__ = ["ExecutorLane"]

_PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)
#: Seconds between two result fetches of one Dask map (see `_DaskBatch._collect`):
#: 200 trivial tasks took 1.24-1.27x `client.map` + `gather` fetching as soon as
#: anything finished, 1.05-1.15x with this pause (alternated, medians of 9, load 5-6).
_GATHER_INTERVAL = 0.01


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
        self._dask = is_dask_executor(executor)
        self._timed_window: int | None = None
        self.check_task = CachedCheck(self._check)

    def _live(self) -> tuple[int, int]:
        return sum(len(b.futures) for b in self.runs()), 0

    def timed_window(self) -> int:
        """Tasks in flight on a Dask cluster for a call with a `timeout`: twice its
        threads. A timeout counts from the task's submission (Dask does not say when a
        task starts), so tasks must not queue on the cluster while their time runs."""
        if self._timed_window is None:
            self._timed_window = 2 * (dask_threads(self.executor) or default_cpu_count())
        return self._timed_window

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
        runner: _ExecutorBatch | _DaskBatch
        runner = _DaskBatch(self, batch) if self._dask else _ExecutorBatch(self, batch)
        self.open_run(runner)
        try:
            await runner.run()
        finally:
            self.close_run(runner)
            self.stats.merge(runner.tally)


def is_dask_executor(executor: Executor) -> bool:
    """Whether `executor` is Dask's ``ClientExecutor`` (``client.get_executor()``),
    told by its type alone: ``distributed`` is never imported to find out."""
    cls = type(executor)
    return (
        cls.__name__ == "ClientExecutor"
        and cls.__module__.startswith("distributed")
        and getattr(executor, "_client", None) is not None
    )


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
        try:
            await _pump(self)
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


class _Phase(enum.Enum):
    """A Dask batch's phase, read by its collectors on the client's loop: they hand
    outcomes over only while it `RUNS` (the caller's loop may be gone after)."""

    RUNS = "runs"
    OVER = "over"


class _CollectorFailed:
    """A collector's own unexpected error, handed to the caller's loop to fail the
    batch (instead of leaving it waiting for outcomes that will never come)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _DaskBatch:
    """One batch on a Dask ``ClientExecutor``, through its client.

    Each refill of the window is one ``client.map(operator.call, tasks)`` (the
    stdlib's ``call``: workers need nothing of tasklanes to run a task), and each
    map gets one collector (`_collect`) on the client's loop, handing the outcomes
    that finished together to the caller's loop in one `Inbox.put_many`. Futures
    are keyed by `id`: Dask futures compare by key, and with ``pure=True`` two equal
    tasks share one.

    With a `timeout`, the window is at most twice the cluster's threads
    (`ExecutorLane.timed_window`): Dask does not say when a task starts, so a
    timeout counts from submission and tasks must not queue on the cluster.
    """

    def __init__(self, lane: ExecutorLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        executor: Any = lane.executor
        self.client: Any = executor._client
        # The executor's own options (workers=, resources=, retries=, pure=...) apply;
        # pure=False unless it says otherwise, as for tasklanes' own pool: every task runs.
        # Keys read "tasklanes-cpu-..." on the dashboard.
        self.options: dict[str, Any] = {
            "pure": False,
            "key": "tasklanes-cpu",
            **getattr(executor, "_kwargs", {}),
        }
        self.inbox = Inbox(batch.loop)
        batch.wake = self.inbox.poke  # limiter=/retry=: a task is ready to pull
        # id(future) -> (future, index, submitted at, task)
        self.futures: dict[int, tuple[Any, int, float, object]] = {}
        self.timed_out: set[int] = set()
        self.deadlines: Deadlines[int] = Deadlines()
        self.tally = Tally()
        self.phase = _Phase.RUNS
        self.window = batch.limit
        if batch.timeout is not None:
            self.window = min(self.window, lane.timed_window())
        self.block = max(1, self.window // 2)
        from distributed import as_completed

        self._as_completed: Any = as_completed

    async def run(self) -> None:
        try:
            await _pump(self)
        except BaseException:
            # Unstarted tasks are dropped by the cluster; running ones finish there
            # and their results are released unread. Nothing waits for them.
            live = [entry[0] for key, entry in self.futures.items() if key not in self.timed_out]
            self.tally.cancelled += len(live)
            self._cancel(live)
            raise
        finally:
            self.phase = _Phase.OVER
            self.futures.clear()

    async def _fill(self) -> None:
        batch = self.batch
        free = self.window - len(self.futures)
        # Each map is a message and a graph update on the cluster's scheduler: refill
        # in blocks of at least half the window, not a map for every result that came.
        if self.futures and free < self.block:
            return
        start, tasks = await pull(batch, free, owed=bool(self.futures))
        if not tasks:
            return
        indexes = list(range(start, start + len(tasks)))
        # (admission hook: a Limiter would be acquired here, before the map.)
        try:
            futures = self.client.map(operator.call, tasks, **self.options)
        except Exception as exc:
            # Dask pickles the whole map at once: one task that does not pickle fails
            # it. Report that task alone and send the others.
            indexes, tasks = self._drop_unpicklable(indexes, tasks, exc)
            if not tasks:
                return
            try:
                futures = self.client.map(operator.call, tasks, **self.options)
            except Exception as again:
                batch.fail(again)
                return
        started = time.monotonic()
        entries = self.futures
        for future, index, task in zip(futures, indexes, tasks, strict=True):
            entries[id(future)] = (future, index, started, task)
        if batch.timeout is not None:
            deadline = started + batch.timeout
            for future in futures:
                self.deadlines.add(deadline, id(future))
        self.client.loop.add_callback(self._collect, futures)

    def _drop_unpicklable(
        self, indexes: list[int], tasks: list[object], exc: Exception
    ) -> tuple[list[int], list[object]]:
        """Emit a `TypeError` for each task that does not pickle; the others remain.
        If every task pickles, the map failed for another reason: fail the batch."""
        keep_indexes: list[int] = []
        keep: list[object] = []
        for index, task in zip(indexes, tasks, strict=True):
            if self.lane.does_not_pickle(task):
                count(self.tally, Outcome.FAILED)
                self.batch.emit(index, False, pickle_error(index, task, exc))
            else:
                keep_indexes.append(index)
                keep.append(task)
        if len(keep) == len(tasks):
            self.batch.fail(exc)
            return [], []
        return keep_indexes, keep

    async def _collect(self, futures: list[Any]) -> None:
        """On the client's loop: hand the outcomes of one map over as they finish,
        all those that finished together at once, their results fetched in one
        ``gather`` (a request per future, as ``as_completed(with_results=True)`` and
        ``ClientExecutor`` make, costs ~1.3-1.6x ``client.map`` + ``gather``), at most
        one every `_GATHER_INTERVAL`."""
        import asyncio  # the client's loop is Tornado's on asyncio

        # ``run_all`` without progress reads nothing before the end (`Batch.streams`):
        # the map's successes are then fetched in one gather once they are all done,
        # as ``client.map`` + ``gather`` does. A failure or a cancellation is still
        # handed over as soon as it is known (with the successes held so far), so
        # fail-fast and timeouts keep their timing.
        holding = not self.batch.streams and self.batch.timeout is None
        held: list[Any] = []
        try:
            finishing = self._as_completed(futures, loop=self.client.loop)
            async for first in finishing:
                done = [first, *finishing.next_batch(block=False)]
                if holding:
                    held += done
                    if not finishing.is_empty() and all(
                        f.status == "finished" for f in done
                    ):
                        continue
                    done, held = held, []
                self._post(await self._outcomes(done))
                if not holding and not finishing.is_empty():
                    # Each gather costs the cluster's scheduler a trip to the workers,
                    # and for small tasks that scheduler is the bottleneck: fetch at
                    # most every few ms (the first results are never held back).
                    await asyncio.sleep(_GATHER_INTERVAL)
        except Exception as exc:  # not a task's error (those arrive as outcomes)
            log.exception("collecting Dask results failed")
            self._post([_CollectorFailed(exc)])

    async def _outcomes(self, done: list[Any]) -> list[tuple[Any, str, Any]]:
        """``(future, status, value)`` for futures that are done: a result for
        ``"finished"``, ``(type, error, traceback)`` for ``"error"``, an exception else."""
        finished = [f for f in done if f.status == "finished"]
        out: list[tuple[Any, str, Any]] = []
        if finished:
            try:
                values = await self.client.gather(finished, asynchronous=True)
            except Exception:  # one was lost meanwhile (its worker died): ask each
                finished = []
            else:
                out.extend(zip(finished, ["finished"] * len(finished), values, strict=True))
        fetched = {id(f) for f in finished}
        for future in done:
            if id(future) in fetched:
                continue
            try:
                # The private coroutine ``as_completed`` awaits too: the error and the
                # traceback a worker sent, or a cancellation, without a round trip.
                value = await future._result(raiseit=False)
            except Exception as exc:
                out.append((future, "lost", exc))
            else:
                out.append((future, future.status, value))
        return out

    def _post(self, items: list[Any]) -> None:
        if self.phase is not _Phase.RUNS:
            return
        try:
            self.inbox.put_many(items)
        except RuntimeError:  # the caller's event loop closed meanwhile: nobody waits
            pass

    def _deliver(self, items: list[Any]) -> None:
        tally = self.tally
        batch = self.batch
        emit_ok = batch.emit_ok
        now = time.monotonic()
        for item in items:
            if isinstance(item, _CollectorFailed):
                batch.fail(item.error)
                continue
            future, status, result = item
            key = id(future)
            entry = self.futures.pop(key, None)
            if entry is None:
                continue
            _, index, started, task = entry
            self.deadlines.remove(key)
            tally.run(now - started)
            if key in self.timed_out:
                self.timed_out.discard(key)
                continue
            if status == "finished":
                tally.completed += 1
                emit_ok(index, result)
                continue
            error = self._error(index, task, status, result)
            count(tally, classify(False, error))
            batch.emit(index, False, error)

    def _error(self, index: int, task: object, status: str, result: Any) -> BaseException:
        """The error a task that did not finish hands to the caller."""
        if status == "error":  # result: (type, exception, traceback) from the worker
            exc: BaseException = result[1]
            if result[2] is not None:
                exc = exc.with_traceback(result[2])
            if isinstance(exc, _PICKLING_ERRORS) and self.lane.does_not_pickle(task):
                return pickle_error(index, task, exc)
            return exc
        # Cancelled by someone else (client.cancel, a restart) or lost with its worker:
        # the task has no result. A RuntimeError, not a CancelledError the caller's
        # loop would take for its own cancellation.
        err = RuntimeError(f"task {index} has no result on the Dask cluster ({status})")
        if isinstance(result, BaseException):
            err.__cause__ = result
        return err

    def _expired(self, key: int) -> None:
        entry = self.futures.get(key)
        if entry is None:
            return
        index = entry[1]
        self.timed_out.add(key)
        # Its entry stays until Dask confirms the cancellation (the collector hands the
        # future back): the window reopens then, as for any other outcome.
        self._cancel([entry[0]])
        count(self.tally, Outcome.TIMED_OUT)
        self.batch.emit(index, False, TaskTimeout(index, self.batch.timeout))

    def _cancel(self, futures: list[Any]) -> None:
        """Cancel `futures` on the cluster, without waiting (from the caller's loop)."""
        if not futures:
            return
        client = self.client
        try:
            client.loop.add_callback(_cancel_on_loop, client, futures)
        except RuntimeError:  # the client's loop is closed: its futures are gone with it
            log.debug("could not cancel %d Dask futures: the client is closed", len(futures))


async def _cancel_on_loop(client: Any, futures: list[Any]) -> None:
    try:
        await client.cancel(futures, asynchronous=True)
    except Exception:
        log.warning("cancelling %d Dask futures failed", len(futures), exc_info=True)


async def _pump(runner: _ExecutorBatch | _DaskBatch) -> None:
    """Both executor batches' main loop: fill the window, deliver what comes back,
    refill, until nothing is in flight; the watchdog (with a timeout) beside it."""
    batch = runner.batch
    async with anyio.create_task_group() as tg:
        if batch.timeout is not None:
            # (Each batch's deadlines are keyed its own way: the watchdog does not care.)
            deadlines: Any = runner.deadlines
            tg.start_soon(watch, deadlines, runner._expired, time.monotonic, batch.timeout)
        await runner._fill()
        while runner.futures:
            runner._deliver(await runner.inbox.get())
            if batch.stopping:
                break
            await runner._fill()
        tg.cancel_scope.cancel()
    if batch.stopping:
        await anyio.lowlevel.checkpoint()  # fail-fast: run the caller's cleanup
