"""The io lane: coroutines on the caller's event loop.

A batch runs as a pool of at most ``limit`` worker tasks in one task group, each
taking the next task from a shared buffer and awaiting it. There is no task, no
semaphore and no cancel scope per item: those cost more than a trivial coroutine
does. The buffer is filled from the input in bulk (`pull`, a few hundred tasks at a
time for a lazy input, a list at once), so a task costs one ``list.pop``, not a trip
through the input's iterator and its checks.

What the common case (no timeout, no progress bar) pays per task: the pop, the
``stopping`` check, the await, one store of the result (for ``run_all``, in place in
the list it returns), a count, and one clock read per task, or per block of up to
64 tasks while they take under 20 us each (see `_IoBatch._work_plain`). Per-task
timeouts add one entry in the batch's deadline heap: the watchdog cancels only the
overrunning worker's long-lived cancel scope; that worker reports ``TaskTimeout`` and
carries on under a fresh scope.

``run_all`` on a list (no timeout, controls or progress) takes the *list path*
(`_IoBatch._take_list`, `_IoBatch._work_list`): no buffer, the workers share one
``enumerate`` over the list as a hand-written loop would, and a task timed on its own
costs one clock stamp.

Capacity (``io_limit``) is per event loop: a worker holds one slot of its loop for
its whole life, so the slot costs one acquire per worker, not per task.

One file, over 500 lines: the worker loops, the shared buffer, its refill and the
pool's growth all read and write one `_IoBatch`'s state and are tuned together (a
change to one hot loop's bookkeeping is a change to the others'); split, that class
would be spread over modules.
"""

from __future__ import annotations

from collections import deque
from itertools import islice, repeat
from operator import sub
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .._advice import Advisor
from .._backend import helper_group, worker_group
from .._batch import Batch
from .._errors import TaskTimeout
from .._loop_lag import sample_loop_lag
from .._stats import LaneStats, Tally, record, record_all
from .._tasks import CachedCheck, check_io_task, close_if_coroutine, describe
from ._base import Deadlines, LaneBase, Outcome, classify, count, pull, watch

if TYPE_CHECKING:
    import anyio

# anyio is imported only by a batch with a timeout (its workers' cancel scopes): on
# asyncio, a batch without one runs on asyncio's own primitives (see `run_batch`).

__all__ = ["IoLane"]

_FLUSH_EVERY = 512  # completions between merges of a batch's tally into the lane's stats
#: Run times a batch's workers leave unbucketed as they end (sorting a few thousand at a
#: time costs less per value than sorting a hundred thousand at the end).
_BUCKET_EVERY = 4096
#: Tasks taken from a lazy input at once: enough to spread the cost of a pull over
#: many tasks, few enough that the input's memory bound holds (the running tasks plus
#: a buffer of at most an eighth of ``limit``; one task for a ``limit`` under 16).
_PULL_CHUNK = 256
#: A task quicker than this is timed in a block with others (see `_IoBatch._work_plain`):
#: a clock read and a histogram entry cost about as much as such a task.
_TRIVIAL = 20e-6
_BLOCK_MAX = 64  # the most tasks timed by one clock read
#: A list-path worker timing tasks one by one turns its clock stamps into run times
#: every this many tasks (see `_IoBatch._lap`).
_LAP = 128


class _NoScope:
    """Stands in for a cancel scope when a batch has no timeout."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SCOPE = _NoScope()


class _Worker:
    __slots__ = ("scope", "timed_out")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.timed_out = False


class _Slots:
    """One event loop's io capacity (``io_limit``), shared by its batches.

    Used only on its loop's thread, so it needs no lock: taking a free slot is a
    decrement (anyio's ``CapacityLimiter`` costs a few microseconds a call, a
    thousand times per batch). A freed slot goes straight to the longest waiter.
    """

    __slots__ = ("event", "free", "users", "waiters")

    def __init__(self, capacity: int, event: Any) -> None:
        self.free = capacity
        self.users = 0  # batches using it (under the lane's lock)
        self.waiters: deque[Any] = deque()  # events (the loop's own: `LoopHandle.event`)
        self.event = event

    def try_take(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot.

        Cancellation: a waiter that is cancelled holds nothing afterwards (a slot
        handed to it as it was cancelled goes to the next waiter).
        """
        event = self.event()
        self.waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.give()
            else:
                self.waiters.remove(event)
            raise

    def give(self) -> None:
        if self.waiters:
            self.waiters.popleft().set()
        else:
            self.free += 1


class IoLane(LaneBase):
    kind = "io"
    #: A batch without controls needs nothing of anyio on asyncio (see `run_batch`).
    native_asyncio = True
    fills_results = True  # stores successes in ``batch.results`` (see `_IoBatch._work_plain`)
    advisor: Advisor | None = None  # set by the Scheduler (kind advice)

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.stats = LaneStats("io", capacity, live=self._live)
        self._slots: dict[object, _Slots] = {}
        self.check_task = CachedCheck(check_io_task, trusted=frozenset({CoroutineType}))
        self._lag_sampled: set[object] = set()  # loops with a lag sampler running

    def claim_lag_sampler(self, key: object) -> bool:
        """True if the caller should sample this loop's lag (one sampler per loop)."""
        with self._lock:
            if key in self._lag_sampled:
                return False
            self._lag_sampled.add(key)
            return True

    def release_lag_sampler(self, key: object) -> None:
        with self._lock:
            self._lag_sampled.discard(key)

    def _live(self) -> tuple[int, int]:
        runs = self.runs()
        return sum(run.running for run in runs), sum(run.waiting for run in runs)

    def _open_slots(self, key: object, event: Any) -> _Slots:
        # One per event loop, dropped when its last batch leaves: no loop is kept
        # alive by the lane.
        with self._lock:
            slots = self._slots.get(key)
            if slots is None:
                slots = self._slots[key] = _Slots(self.capacity, event)
            slots.users += 1
            return slots

    def _close_slots(self, key: object, slots: _Slots) -> None:
        with self._lock:
            slots.users -= 1
            if slots.users == 0 and self._slots.get(key) is slots:
                del self._slots[key]

    async def run(self, batch: Batch) -> None:
        key = batch.loop.key
        runner = _IoBatch(self, batch)
        self.open_run(runner)
        slots = runner.slots = self._open_slots(key, batch.loop.event)
        try:
            await runner.run()
        finally:
            self._close_slots(key, slots)
            self.close_run(runner)


class _IoBatch:
    def __init__(self, lane: IoLane, batch: Batch) -> None:
        self.lane = lane
        self.batch = batch
        self.slots: _Slots | None = None
        self.running = 0  # workers holding a capacity slot
        self.waiting = 0  # workers waiting for one
        #: Pulled tasks not started yet, last to run first (``pop()`` is O(1)); the
        #: task just popped has index ``top - len(ready)``. No pair per task: a
        #: hundred thousand small tuples cost more in allocation and garbage
        #: collection than the trivial coroutines they carry. One list for the batch's
        #: life, refilled in place: a worker holds it in a local, and with a thousand
        #: workers a new list per chunk would send each of them through `_refill`
        #: once per chunk just to pick the new one up.
        self.ready: list[Any] = []
        self.top = -1
        self.done = False  # the input has no more tasks
        self.nworkers = 0
        self.starting = 0  # workers spawned that have not run yet
        target = batch.limit
        if batch.source.size is not None:
            target = min(target, batch.source.size)
        self.target = max(target, 1)
        source = batch.source
        #: limiter= with room: each task is admitted here as it starts (see `_refused`).
        lazy = getattr(source, "lazy_admission", None) if batch.controls is not None else None
        self.admit: Any = None if lazy is None else lazy()
        # A list is materialised already: take it whole. A lazy input a chunk at a time.
        if source.in_memory and source.size:
            self.chunk = source.size
        else:
            self.chunk = max(1, min(_PULL_CHUNK, batch.limit // 8))
        #: The list path (`_take_list`): ``enumerate`` over the whole list input, shared
        #: by the workers, and whether its tasks are all coroutine objects.
        self.it: Any = None
        self.coros = False
        self.pulling = False  # a worker is pulling the next chunk
        self.pulled: Any = None  # an event (`LoopHandle.event`) set when that pull ends
        self.tally = Tally()
        #: Run times of tasks timed one by one, for the percentiles, from every worker:
        #: appended by the hot loops, bucketed in bulk when a worker merges the tally
        #: into the lane's stats and when the batch ends. An append costs a fraction of
        #: bucketing one value, and bucketing thousands at once a fraction of bucketing
        #: them in small lots (`record_all` sorts them and takes a bucket at a time).
        self.times: list[float] = []
        self.deadlines: Deadlines[_Worker] = Deadlines()
        self.spawn: Any = None
        #: limiter=/rate=/retry=: a worker holding an io slot never waits for the input
        #: (a task may be waiting for a limiter); see `_take_nowait`.
        self.controlled = batch.controls is not None
        #: ``run_all``'s list, filled in place (see `Batch.results`), or None.
        self.results = batch.results
        if self.results is not None and self.controlled:
            # retry= alone (see `_take_nowait`): the controls count the successes
            # timed one by one from `times` until they are bucketed into `filled`.
            source.uncounted = self.times  # type: ignore[attr-defined]
        #: What a worker runs. Without a timeout, the hot loop itself: a task that
        #: suspends then passes through one frame fewer each way.
        self.worker = self._work_plain if batch.timeout is None else self._worker

    async def run(self) -> None:
        batch = self.batch
        stats = self.lane.stats
        key = batch.loop.key
        sampling = self.lane.claim_lag_sampler(key)  # the loop-lag figure
        advisor = self.lane.advisor  # kind advice: watch the loop for tasks that hold it
        watching = (
            None
            if advisor is None
            else advisor.watch_loop(key, batch.loop.call_soon_threadsafe, _RUNNER_CODES)
        )
        loop = batch.loop
        try:
            # The helpers (watchdog, lag sampler) run until the workers are done.
            async with helper_group(loop.backend) as start:
                if batch.timeout is not None:
                    start(watch, self.deadlines, self._expired, loop.clock, batch.timeout)
                if sampling:
                    start(sample_loop_lag, stats, loop.clock, loop.sleep)
                async with worker_group(loop.backend) as spawn:
                    self.spawn = spawn
                    if not self._take_list():
                        await self._refill()
                    self._grow()
        finally:
            # Tasks pulled and never started (the batch stopped): they never run.
            for task in self.ready:
                close_if_coroutine(task)
            self.ready.clear()
            self._halt()
            # The batch holds `_halt` and so this runner: break the cycle, so that
            # the list path's copy of the input goes now, not at a collection.
            self.batch.halt = None
            self.it = None
            if sampling:
                self.lane.release_lag_sampler(key)
            if watching is not None:
                watching.close()
            self._bucket()
            stats.merge(self.tally)

    def _take_list(self) -> bool:
        """The list path: take a list input whole, for `_work_list`; False (pull as
        usual) unless this is ``run_all`` on a list without timeout, controls or
        progress, the common case.

        The workers then share one ``enumerate`` over the list, as a hand-written
        loop would: a task costs a ``next`` on it, not a ``pop``, an index computed
        from the buffer's length and a check of ``batch.stopping``; a batch that
        stops ends the iterator instead (`_halt`, through ``batch.halt``).
        """
        batch = self.batch
        if batch.timeout is not None or self.controlled or self.results is None:
            return False
        if batch.stopping:
            return False
        source = batch.source
        tasks = source.take_rest()
        if tasks is None:
            return False
        self.results += repeat(None, len(tasks))
        self.coros = source.all_trusted  # the io lane trusts coroutine objects alone
        self.it = enumerate(tasks, source.pulled - len(tasks))
        self.worker = self._work_list
        batch.halt = self._halt
        return True

    def _halt(self) -> None:
        """The list path's input ends here (the batch stops): close the tasks left."""
        it = self.it
        if it is not None:
            for _, task in it:
                close_if_coroutine(task)

    def _grow(self) -> None:
        """Make sure a worker is on its way while tasks wait, up to ``limit``.

        Workers are started on demand, not ``limit`` at once: a new worker only runs
        once the running ones have all suspended (the loop got control back), and it
        then starts as many more as there are workers already (see ``_admit``), so
        the pool doubles each time the loop comes round: ``limit`` = 1000 workers
        are up within ten loop iterations when tasks wait, while a batch of tasks
        that never suspend is run by one worker and costs one spare, not 999.
        """
        if self.starting == 0 and self.nworkers < self.target and (self.ready or not self.done):
            self._spawn(1)

    def _spawn(self, n: int) -> None:
        n = min(n, self.target - self.nworkers)
        self.nworkers += n
        self.starting += n
        spawn = self.spawn
        worker = self.worker
        for _ in range(n):
            spawn(worker)

    async def _refill(self) -> bool:
        """Pull the next chunk of tasks into ``ready``; False once none are left.

        One worker pulls at a time and the others wait for it, so an async input is
        never read by two workers at once and a slow input costs one waiter, not
        ``limit`` of them polling.
        """
        while True:
            if self.ready:
                return True
            if self.done:
                return False
            if not self.pulling:
                break
            if self.pulled is None:  # made only when someone waits: most pulls don't
                self.pulled = self.batch.loop.event()
            await self.pulled.wait()
        self.pulling = True
        try:
            start, tasks = await pull(self.batch, self.chunk)
        finally:
            self.pulling = False
            if self.pulled is not None:
                self.pulled.set()
                self.pulled = None
        if not tasks:
            self.done = True
            return False
        if self.results is not None:
            self.results += repeat(None, len(tasks))  # a slot per task pulled
        tasks.reverse()
        self.ready += tasks  # in place: the workers hold it (empty until now) in a local
        self.top = start + len(tasks) - 1
        # (With limiter=, the tasks pulled hold their limiters already; a worker that
        # would wait for one gives its io capacity slot back first: `_take_nowait`.)
        self._grow()
        return True

    def _take_nowait(self) -> bool:
        """With controls: the next tasks for a worker holding an io slot, if they need
        no waiting. Otherwise (False) the worker ends, and one worker holding no slot
        waits in `_refill` instead (a fresh one, unless one waits or is on its way
        already): waiting for a limiter or a retry takes no io capacity."""
        if self.ready:  # another worker pulled a chunk meanwhile
            return True
        batch = self.batch
        source = batch.source
        if self.results is not None and self.pulling and source.exhausted:
            # retry= alone: the source counts the successes stored in place to tell
            # when none can come back (`batch.filled`, and `times`: see `__init__`).
            # This worker's block is counted now: if it was the last, the waiting
            # worker ends.
            source.recheck()  # type: ignore[attr-defined]
        if not self.done and not self.pulling and not batch.stopping:
            try:
                tasks = source.take(self.chunk)
            except Exception as exc:
                batch.fail(exc)
                return False
            if tasks:
                if self.results is not None:
                    self.results += repeat(None, len(tasks))
                tasks.reverse()
                self.ready += tasks  # in place (see `_refill`)
                self.top = source.pulled - 1
                self._grow()
                return True
            if source.exhausted:
                self.done = True
        if not self.done and not batch.stopping:
            if self.pulling or self.starting:
                self.nworkers -= 1  # a worker waits for the input already, or will
            else:
                self.starting += 1  # this worker's replacement (nworkers is unchanged)
                self.spawn(self.worker)
        return False

    def _refused(self, index: int, task: Any) -> None:
        """Lazy admission: a limiter had no room for the task just popped. It and the
        tasks pulled after it go back to the controls, which make them wait holding no
        io slot, and admit every later task before handing it out."""
        rest = self.ready[::-1]
        self.ready.clear()  # in place: the other workers share this list
        self.admit = None
        self.batch.source.not_admitted(index, [task, *rest])  # type: ignore[attr-defined]

    async def _admit(self) -> bool:
        """A new worker's start: True once it holds an io capacity slot and should
        run tasks (then it calls `_leave` when it ends), False if none are left."""
        batch = self.batch
        self.starting -= 1
        if batch.stopping or (self.it is None and not self.ready and not await self._refill()):
            return False
        # Running means the workers before this one have suspended: tasks wait on
        # something, so start as many more workers as there are (up to ``limit``).
        if self.starting == 0 and self.nworkers < self.target:
            self._spawn(self.nworkers)
        slots = self.slots
        assert slots is not None
        if not slots.try_take():
            # The loop's io capacity is taken by other batches: wait for a slot.
            clock = batch.loop.clock
            t0 = clock()
            self.waiting += 1
            try:
                await slots.take()
            finally:
                self.waiting -= 1
            self.tally.wait(clock() - t0)
        self.running += 1
        return True

    def _leave(self) -> None:
        self.running -= 1
        assert self.slots is not None
        self.slots.give()

    async def _worker(self) -> None:
        """A worker of a batch with a timeout (without one, `_work_plain` is the worker)."""
        if not await self._admit():
            return
        try:
            await self._work(_Worker())
        finally:
            self._leave()

    def _finish(self, index: int, ok: bool, value: Any) -> None:
        """Hand one outcome over (off the hot path: failures and timeouts)."""
        count(self.tally, classify(ok, value))
        self.batch.emit(index, ok, value)

    async def _work_plain(self) -> None:
        """A worker of a batch without a timeout: run tasks until the input ends.

        It pays only for what such a batch uses: a ``pop`` from the shared buffer,
        the ``stopping`` check, the await, the store of the result (``run_all``: in
        place in its list, see `Batch.results`; otherwise ``emit_ok``) and a count.

        The run-time figures come from one clock read per *block* of tasks (a task's
        run time is the time since the previous read: the worker goes from one task
        straight to the next). A block is one task while tasks take `_TRIVIAL` or
        more, so each is timed on its own: its run time is appended to the batch's
        `times`, and that is all it costs here (counts, sums and buckets are taken
        from that list in bulk, `_bucket`). While tasks are quicker, the block doubles
        up to `_BLOCK_MAX` tasks (a clock read and a histogram entry cost as much as
        such a task) and each of its tasks counts the block's mean (`_timed`). Count,
        total and mean stay exact; see `_time_block` for the max and the percentiles.
        """
        if not await self._admit():
            return
        batch = self.batch
        clock = batch.loop.clock
        emit_ok = batch.emit_ok
        results = self.results
        times = self.times
        keep = times.append
        block = 1  # tasks per clock read
        n = 0  # tasks run since the last read
        quick = 0.0  # the mean of the last block that was quick
        ready = self.ready  # one list for the batch's life, refilled in place
        pop = ready.pop
        admit = self.admit
        last = clock()
        try:
            while True:
                if not ready:
                    if n:  # close the block: the time to refill is no task's
                        self._timed(clock() - last, n, quick, n)
                        n = 0
                    if not (self._take_nowait() if self.controlled else await self._refill()):
                        break
                    admit = self.admit
                    last = clock()
                    continue
                if batch.stopping:
                    break
                task = pop()
                index = self.top - len(ready)
                # Lazy admission: re-read it, as another worker may have ended it (a
                # refusal, `_refused`) while this one awaited its task; the tasks in
                # `ready` are then already admitted, and must not be admitted again.
                if admit is not None and (admit := self.admit) is not None and not admit():
                    self._refused(index, task)
                    continue
                try:
                    if type(task) is CoroutineType:
                        value = await task
                    else:
                        value = await _awaitable(index, task)
                except Exception as exc:
                    # Close the block with this task in it (failures are rare, and may
                    # be slow); the next block starts from one task.
                    now = clock()
                    self._timed(now - last, n + 1, quick, n)
                    last = now
                    n = 0
                    block = 1
                    self._finish(index, False, exc)
                    continue
                except BaseException:
                    self.tally.cancelled += 1  # the batch or its caller was cancelled
                    raise
                if results is None:
                    emit_ok(index, value)
                else:
                    results[index] = value
                n += 1
                if n >= block:
                    now = clock()
                    if n == 1:
                        elapsed = now - last
                        last = now
                        n = 0
                        keep(elapsed)
                        if elapsed < _TRIVIAL:
                            quick = elapsed
                            block = 2
                        if len(times) >= _FLUSH_EVERY:
                            self._flush()
                    else:
                        each = self._timed(now - last, n, quick, n)
                        last = now
                        if each < _TRIVIAL:
                            quick = each
                            block = n + n if n < _BLOCK_MAX else _BLOCK_MAX
                        else:
                            block = 1
                        n = 0
        finally:
            self._leave()
            if n:  # the tasks run since the last read (the batch stopped)
                self._timed(clock() - last, n, quick, n)
            if len(times) >= _BUCKET_EVERY:
                self._bucket()

    async def _work_list(self) -> None:
        """The worker of the list path (`_take_list`): `_work_plain` without a buffer.

        The tasks come from the shared ``enumerate``, with their indexes, a lap at a
        time (``islice``: it reads no task ahead); no ``stopping`` check (a batch that
        stops ends the iterator) and, when the list holds coroutine objects alone, no
        type check. Tasks are timed as in `_work_plain`, with nothing counted per task:

        * one by one (tasks of `_TRIVIAL` or more), laps of `_LAP` tasks: a task
          costs one clock read appended to ``stamps``, and `_lap` turns the stamps
          into run times in bulk (the worker goes from one task straight to the
          next: a run time is the difference of two stamps), then says whether they
          were quick enough to be timed in blocks;
        * in blocks (quicker tasks), a lap is one block, timed by one clock read.

        A lap that runs short has met the end of the input. A failure ends its lap
        (it is timed alone, as `_work_plain` times it), and the next starts at one.
        """
        if not await self._admit():
            return
        clock = self.batch.loop.clock
        results = self.results
        assert results is not None
        it = self.it
        coros = self.coros
        stamps: list[float] = []
        keep = stamps.append
        block = 1  # tasks per clock read
        n = 0  # tasks run in the current block
        quick = 0.0  # the mean of the last block that was quick
        last = clock()  # the start of the current block (blocks of more than one)
        keep(last)
        try:
            while True:
                if block == 1:
                    for index, task in islice(it, _LAP):
                        try:
                            if coros or type(task) is CoroutineType:
                                results[index] = await task
                            else:
                                results[index] = await _awaitable(index, task)
                        except Exception as exc:
                            now = clock()
                            self._lap(stamps)
                            self._timed(now - stamps[0], 1, quick, 0)
                            stamps[0] = now
                            self._finish(index, False, exc)
                            break
                        except BaseException:
                            self.tally.cancelled += 1  # the batch or its caller was cancelled
                            raise
                        keep(clock())
                    else:
                        ran = len(stamps) - 1
                        quick = self._lap(stamps)
                        if ran < _LAP:
                            return  # the input has ended
                        if quick:
                            block = 2
                            last = stamps[0]
                else:
                    for index, task in islice(it, block):
                        try:
                            if coros or type(task) is CoroutineType:
                                results[index] = await task
                            else:
                                results[index] = await _awaitable(index, task)
                        except Exception as exc:
                            now = clock()
                            self._timed(now - last, n + 1, quick, n)
                            n = 0
                            block = 1
                            stamps[0] = now
                            self._finish(index, False, exc)
                            break
                        except BaseException:
                            self.tally.cancelled += 1
                            raise
                        n += 1
                    else:
                        now = clock()
                        ran = n
                        if n:
                            each = self._timed(now - last, n, quick, n)
                            n = 0
                        if ran < block:
                            return  # the input has ended
                        last = now
                        if each < _TRIVIAL:
                            quick = each
                            block = block + block if block < _BLOCK_MAX else _BLOCK_MAX
                        else:
                            block = 1
                            stamps[0] = now
        finally:
            self._leave()
            if block == 1:
                self._lap(stamps)
            elif n:  # the tasks run since the last read (the batch stopped)
                self._timed(clock() - last, n, quick, n)
            if len(self.times) >= _BUCKET_EVERY:
                self._bucket()

    def _lap(self, stamps: list[float]) -> float:
        """Turn a list-path worker's clock stamps (one per task, after the one its
        first task started at) into run times in `times`, keeping the last stamp as
        the next task's start; return their mean if it is under `_TRIVIAL` (time the
        next tasks in blocks), else 0."""
        k = len(stamps) - 1
        if k <= 0:
            return 0.0
        times = self.times
        times += map(sub, islice(stamps, 1, None), stamps)
        mean = (stamps[-1] - stamps[0]) / k
        del stamps[:-1]
        if len(times) >= _FLUSH_EVERY:
            self._flush()
        return mean if mean < _TRIVIAL else 0.0

    async def _work(self, worker: _Worker) -> None:
        """Run tasks until the input ends (a batch with a timeout).

        What it needs is held in locals, a task costs two clock reads and one entry
        in the deadline heap; a success's run time is appended to the batch's `times`
        (counted and bucketed in bulk, `_bucket`). Each pass of the outer loop is one
        long-lived cancel scope; the watchdog cancels it when the running task
        overruns, and the next pass starts a fresh one.
        """
        batch = self.batch
        clock = batch.loop.clock
        timeout = batch.timeout
        emit_ok = batch.emit_ok
        results = self.results
        deadlines = self.deadlines
        times = self.times
        keep = times.append
        index = -1
        more = True
        import anyio

        try:
            while more:
                # A cancel scope costs ~14 us to create: only workers that may time out
                # get one, and then one per worker (per timeout), not one per task.
                with anyio.CancelScope() if timeout is not None else _NO_SCOPE as scope:
                    worker.scope = scope
                    while True:
                        ready = self.ready
                        if not ready:
                            if not (
                                self._take_nowait() if self.controlled else await self._refill()
                            ):
                                more = False
                                break
                            continue
                        if batch.stopping:
                            more = False
                            break
                        task = ready.pop()
                        index = self.top - len(ready)
                        if self.admit is not None and not self.admit():
                            self._refused(index, task)
                            continue
                        start = clock()
                        if timeout is not None:
                            deadlines.add(start + timeout, worker)
                        try:
                            if type(task) is CoroutineType:
                                value = await task
                            else:
                                value = await _awaitable(index, task)
                        except Exception as exc:
                            self._timed(clock() - start, 1, 0.0, 0)
                            if worker.timed_out:
                                break  # overran, then raised on its way out: a timeout
                            if timeout is not None:
                                deadlines.remove(worker)
                            self._finish(index, False, exc)
                        except BaseException:
                            if not worker.timed_out:  # the batch or its caller was cancelled
                                self.tally.cancelled += 1
                            raise
                        else:
                            elapsed = clock() - start
                            if worker.timed_out:
                                # Overran, swallowed the cancellation: a timeout.
                                self._timed(elapsed, 1, 0.0, 0)
                                break
                            keep(elapsed)
                            if timeout is not None:
                                deadlines.remove(worker)
                            if results is None:
                                emit_ok(index, value)
                            else:
                                results[index] = value
                            if len(times) >= _FLUSH_EVERY:
                                self._flush()
                if worker.timed_out:
                    # The watchdog cancelled this worker's scope: the task overran.
                    worker.timed_out = False
                    count(self.tally, Outcome.TIMED_OUT)
                    self.batch.emit(index, False, TaskTimeout(index, timeout))
        finally:
            if len(times) >= _BUCKET_EVERY:
                self._bucket()

    def _timed(self, elapsed: float, n: int, quick: float, ok: int) -> float:
        """Count `n` tasks timed together (`elapsed` seconds in all; `ok` of them
        succeeded) into the tally; return the run time to report for the max (see
        `_time_block`). Merges the tally into the lane's stats every `_FLUSH_EVERY`."""
        tally = self.tally
        tally.completed += ok
        tally.run_count += n
        tally.run_total += elapsed
        each = _time_block(tally.run_hist, elapsed, n, quick)
        if each > tally.run_max:
            tally.run_max = each
        if self.results is not None:
            self.batch.filled += ok
        if tally.run_count >= _FLUSH_EVERY:
            self._flush()
        return each

    def _bucket(self) -> None:
        """Count the run times in `times` (successes timed one by one) into the tally,
        in bulk: the count, sum and max in C, the buckets by `record_all`."""
        times = self.times
        if not times:
            return
        k = len(times)
        tally = self.tally
        tally.completed += k
        tally.run_count += k
        tally.run_total += sum(times)
        top = max(times)
        if top > tally.run_max:
            tally.run_max = top
        if self.results is not None:
            self.batch.filled += k
        record_all(tally.run_hist, times)

    def _flush(self) -> None:
        """Merge what the batch has counted into the lane's stats (now and then)."""
        self._bucket()
        self.lane.stats.merge(self.tally)

    def _expired(self, worker: _Worker) -> None:
        """The watchdog's verdict: cancel the overrunning worker's scope, and only it."""
        worker.timed_out = True
        if worker.scope is not None:
            worker.scope.cancel()


def _awaitable(index: int, task: Any) -> Any:
    """What to await for a task that is not a coroutine object."""
    if not callable(task):
        return task  # an awaitable (checked when it was pulled)
    awaitable = task()
    if type(awaitable) is not CoroutineType and not hasattr(awaitable, "__await__"):
        raise TypeError(
            f"task {index} ({describe(task)}) returned {describe(awaitable)}, not an "
            "awaitable: kind='io' runs async code; use kind='blocking' or kind='cpu' "
            "for sync code"
        )
    return awaitable


def _time_block(hist: dict[int, int], elapsed: float, n: int, quick: float) -> float:
    """Count `n` tasks timed together (`elapsed` seconds in all) into the run-time
    histogram `hist`; return the run time to report for the max.

    While the block is quick (a mean under `_TRIVIAL`), each of its tasks counts the
    mean. A block that turns out slow after quick ones (a task in it waited, or
    computed) is taken as `n - 1` tasks at `quick`, the mean of the quick block before
    it, and one task that took the rest: a stall among quick tasks then shows in the
    max and the percentiles as what it was, not as a mean `n` times smaller. (Several
    slow tasks in that one block show as one, whose time is their sum: the reported
    max may then be above the true one, never below it.)
    """
    if n == 1:
        record(hist, elapsed)
        return elapsed
    each = elapsed / n
    if each < _TRIVIAL:
        record(hist, each, n)
        return each
    record(hist, quick, n - 1)
    slow = elapsed - (n - 1) * quick
    record(hist, slow)
    return slow


# The frames that await a task: the advice watchdog looks just inside them.
_RUNNER_CODES = (
    _IoBatch._work.__code__,
    _IoBatch._work_plain.__code__,
    _IoBatch._work_list.__code__,
)
