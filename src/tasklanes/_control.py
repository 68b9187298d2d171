"""`limiter=`, `rate=` and `retry=` of one call: a layer between a batch's tasks and its lane.

The lane sees an ordinary source and an ordinary `emit`; this layer sits in both:

* **Admission.** [`ControlledSource`][] pulls a task from the caller's input, takes its
  limiters (all or nothing) and only then hands it to the lane. A task that must
  wait for a limiter waits in a small task on the caller's loop: no thread, no worker
  process, and no lane slot waits for it. It does count against the call's `limit`:
  at most `limit` tasks of the call are admitted or waiting at once.
* **Release when really over.** Blocking tasks are wrapped so that their limiters
  are released when the thread's call returns, whatever the lane reported before (a
  blocking task that timed out keeps its limiters until its thread returns). io
  tasks release at their outcome: the io lane reports one only once the coroutine
  has ended (a timed-out one is cancelled and unwound first). cpu tasks release at
  their outcome too, except a timed-out one, which releases when the pool reports its
  worker gone (`task_gone`).
* **Lane indexes.** A lane numbers the tasks it pulls consecutively (`pull` works out
  a bulk pull's indexes from `pulled`), but admission completes out of order and a
  retry hands an old task out again. So the lane sees *lane indexes*, a count of
  hand-outs, and this layer translates each outcome back to the task's real index
  (`emit`, `emit_ok`, `emit_ok_many`; the `.index` of a `TaskTimeout` or
  `WorkerCrashed` the lane made). What an attempt holds is kept by lane index: each
  attempt has its own, so a cpu worker reaped for an old attempt's timeout
  (`task_gone`, from the pool's manager thread) never mixes with a newer attempt.
* **Lazy admission.** For the io lane and the blocking lane's threads, while the
  call's limiters have room, admission moves to the moment a task starts: the lane
  takes tasks in bulk, unadmitted, and admits each as it starts it, with one
  non-blocking `try_acquire` (a blocking worker thread does it itself, under its
  job's lock, so no task waits for a trip through the event loop). Tasks held at
  most by the lane's workers are at most `limit`, so the call's bound holds. The
  first task the limiters refuse goes back, with every task pulled after it, to the
  waiting path above, which admits every later task of the call (`not_admitted`).
  Only for fixed, concurrency-only limiters, no `retry=` and a sync input: a rate
  limiter is binding by nature, and the lane indexes of lazily admitted tasks are
  their real indexes, which a retry or an async input would break.
* **Retry.** A failed outcome that the call's [`Retry`][tasklanes.Retry] wants again
  never reaches the batch's `emit`: the task waits out its backoff holding nothing,
  then goes back through admission. The source says `END` only when no task of the
  batch can come back any more.
* **`retry=` alone** (no limiter): tasks taken from a sync input before any retry is
  handed out keep their real index as lane index (`direct_end`): a success goes
  straight to the caller's `emit_ok`, with nothing to translate or release. For
  `run_all` on a list on the io lane, the lane stores successes in place in the list
  it returns, as without controls, and only counts them (`filled_by`); a retry's
  success, stored under its lane index, is moved to its real index at the end.

One file on purpose, past 500 lines: admission (eager, lazy, queued), the lane-index
translation and the release points share `ControlledSource`'s counters
(`in_flight`, `lazy_held`, `holds`, `backlog`), and each step relies on the others'
invariants; split apart, those invariants would span modules.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._call import Call
from ._errors import TaskTimeout, WorkerCrashed
from ._limits import Limiter, acquire_all, release_all, resolve_limiter_arg, try_acquire_all
from ._retry import Retry, check_retry, check_retryable_task, note_attempts
from ._stats import Tally
from ._tasks import END

if TYPE_CHECKING:
    from ._batch import Batch, Lane
    from ._tasks import Source

__all__ = ["Controls", "ControlledSource", "make_controls"]

#: Task types that can always run again (callables, never awaitables).
_RUN_TWICE = frozenset({Call, functools.partial})


class Controls:
    """The checked `limiter=`, `rate=` and `retry=` of one call."""

    __slots__ = ("call_limiter", "fixed", "limiters_for", "retry")

    def __init__(
        self,
        limiters_for: Callable[[Any], tuple[Limiter, ...]] | None,
        call_limiter: Limiter | None,
        retry: Retry | None,
    ) -> None:
        self.limiters_for = limiters_for
        self.call_limiter = call_limiter
        self.retry = retry
        #: The same limiters for every task (no callable): worked out once.
        self.fixed: tuple[Limiter, ...] | None = None
        if limiters_for is None:
            self.fixed = () if call_limiter is None else (call_limiter,)

    def check(self, lane_check: Callable[[object, int], None]) -> Callable[[object, int], None]:
        """The lane's task check, plus "can run twice" when retrying."""
        if self.retry is None:
            return lane_check

        def check(task: object, index: int) -> None:
            check_retryable_task(task, index)
            lane_check(task, index)

        lane_check_many = getattr(lane_check, "check_many", None)
        if lane_check_many is not None:

            def check_many(tasks: list[Any] | tuple[Any, ...], start: int) -> None:
                # A list of `call(...)`s or partials (never awaitable): in bulk.
                if not set(map(type, tasks)) <= _RUN_TWICE:
                    for index, task in enumerate(tasks, start):
                        check_retryable_task(task, index)
                lane_check_many(tasks, start)

            check.check_many = check_many  # type: ignore[attr-defined]
        return check

    def limiters(self, task: Any) -> tuple[Limiter, ...]:
        lims = self.limiters_for(task) if self.limiters_for is not None else ()
        if self.call_limiter is not None:
            lims = (*lims, self.call_limiter)
            if len(lims) > 1:
                lims = tuple(sorted(set(lims), key=lambda lim: lim._id))
        return lims

    async def run(self, lane: Lane, batch: Batch) -> None:
        """Run `batch` on `lane` with this layer in between."""
        source = ControlledSource(batch.source, self, batch, lane)
        batch.source = source  # type: ignore[assignment]
        batch.emit = source.emit
        batch.emit_ok = source.emit_ok
        batch.emit_ok_many = source.emit_ok_many
        try:
            async with anyio.create_task_group() as tg:
                source.spawn = tg.start_soon  # type: ignore[assignment]
                await lane.run(batch)
                tg.cancel_scope.cancel()
        finally:
            if source.tally.retried:
                lane.stats.merge(source.tally)


def make_controls(
    limiter: object, rate: object, retry: object, per_item: Callable[[Any], Any] | None = None
) -> Controls | None:
    """Check `limiter=`, `rate=`, `retry=` up front; None when none is given.

    `per_item` maps a task back to the item a `limiter=` callable is called with
    (`amap` calls it with the item, the others with the task).
    """
    limiters_for = resolve_limiter_arg(limiter)
    call_limiter = None if rate is None else Limiter(rate=rate)  # type: ignore[arg-type]
    checked_retry = check_retry(retry)
    if limiters_for is None and call_limiter is None and checked_retry is None:
        return None
    if limiters_for is not None and per_item is not None:
        by_task = limiters_for

        def limiters_for_item(task: Any) -> tuple[Limiter, ...]:
            return by_task(per_item(task))

        limiters_for = limiters_for_item
    controls = Controls(limiters_for, call_limiter, checked_retry)
    if isinstance(limiter, (Limiter, list, tuple)):
        controls.fixed = controls.limiters(None)
    return controls


class _Hold:
    """The limiters one attempt holds; released exactly once, from any thread."""

    __slots__ = ("_box",)

    def __init__(self, limiters: tuple[Limiter, ...]) -> None:
        self._box = [limiters]

    def release(self) -> None:
        try:
            limiters = self._box.pop()  # atomic: a thread and the loop may race here
        except IndexError:
            return
        for limiter in limiters:
            limiter.release()


def _release(held: _Hold | tuple[Limiter, ...]) -> None:
    if isinstance(held, _Hold):
        held.release()
    else:
        for limiter in held:
            limiter.release()


class _BlockingAttempt:
    """A blocking task that releases its limiters when its thread's call returns."""

    __slots__ = ("hold", "task")

    def __init__(self, task: Callable[[], Any], hold: _Hold) -> None:
        self.task = task
        self.hold = hold

    def __call__(self) -> Any:
        try:
            return self.task()
        finally:
            self.hold.release()

    def __repr__(self) -> str:
        return repr(self.task)

    @property
    def __tasklanes_wrapped__(self) -> Any:
        # What kind advice measures is the task's function, not this wrapper.
        return self.task


class _LazyBlockingAttempt:
    """A blocking task handed out before admission: the worker thread that starts it
    admits it first (`admit`, under its job's lock) and releases its limiters when
    its call returns. One that is never admitted holds nothing."""

    __slots__ = ("admitted", "limiters", "task")

    def __init__(self, task: Callable[[], Any], limiters: tuple[Limiter, ...]) -> None:
        self.task = task
        self.limiters = limiters
        self.admitted = False

    def admit(self) -> bool:
        """Take the limiters now if they have room (never waits); any thread."""
        limiters = self.limiters
        if limiters[0].try_acquire() if len(limiters) == 1 else try_acquire_all(limiters):
            self.admitted = True
            return True
        return False

    def __call__(self) -> Any:
        try:
            return self.task()
        finally:
            if self.admitted:  # only the thread that admitted it runs it
                release_all(self.limiters)

    def __repr__(self) -> str:
        return repr(self.task)

    @property
    def __tasklanes_wrapped__(self) -> Any:
        return self.task


def _nothing() -> None:
    return None


def _ok_one(emit: Callable[[int, bool, Any], None], index: int, value: Any) -> None:
    emit(index, True, value)


def _ok_each(
    emit: Callable[[int, bool, Any], None], indexes: Sequence[int], values: list[Any]
) -> None:
    for index, value in zip(indexes, values, strict=True):
        emit(index, True, value)


def _renumbered(exc: BaseException, index: int) -> BaseException:
    """A `TaskTimeout` or `WorkerCrashed` the lane made with its lane index, made
    again with the task's real index (its message names the index too)."""
    if isinstance(exc, TaskTimeout):
        return TaskTimeout(index, exc.timeout)
    assert isinstance(exc, WorkerCrashed)
    return WorkerCrashed(index, exc.exitcode)


#: An admitted task not handed to the lane yet: (real index, task, limiters taken).
_Admitted = tuple[int, Any, tuple[Limiter, ...]]


class ControlledSource:
    """What the lane pulls from when a call has controls; see the module docstring.

    It offers what a lane uses of a [Source][tasklanes._tasks.Source] (`take`,
    `next`, `pulled`, `exhausted`, `blocked`, ...), in lane indexes. Everything here
    runs on the caller's loop, except `_Hold.release` (any thread) and `task_gone`
    (the process pool's manager thread).
    """

    def __init__(self, inner: Source, controls: Controls, batch: Batch, lane: Lane) -> None:
        self.inner = inner
        self.controls = controls
        self.retry = controls.retry
        self.batch = batch
        self.kind = lane.kind
        self.lane = lane
        #: The `limited` gauge: how many of this call's tasks wait for a limiter, and
        #: the lane figures they are counted in (see `_limited`).
        self.limited = 0
        self.limited_in = lane.stats
        self.forward = emit = batch.emit
        #: A success straight to the caller's own `emit_ok` (for `run_all`, a dict
        #: store). The batch's defaults call `batch.emit`, which is ours from now on:
        #: they are replaced by the same over the caller's `emit`.
        self.forward_ok = batch.emit_ok
        self.forward_ok_many = batch.emit_ok_many
        if getattr(self.forward_ok, "__self__", None) is batch:
            self.forward_ok = functools.partial(_ok_one, emit)
        if getattr(self.forward_ok_many, "__self__", None) is batch:
            self.forward_ok_many = functools.partial(_ok_each, emit)
        self.ready: deque[_Admitted] = deque()
        self.in_flight = 0  # pulled from the input and without a final outcome yet
        self.pending = 0  # waiting for a limiter or a backoff
        # At most `limit` tasks admitted or waiting; without limiters there is no
        # budget to hoard, and the lane bounds what it pulls itself.
        self.cap = batch.limit if controls.fixed != () else 1 << 62
        self.inner_done = False
        self.reading = False  # a small task awaits the next task of an async input
        self.error: Exception | None = None  # the input failed while read in the background
        self.handed = 0  # tasks handed to the lane: the next lane index
        self.real: dict[int, int] = {}  # lane index -> the task's index in the input
        #: retry= alone: lane indexes below this are first attempts handed out in bulk
        #: straight from a sync input, each under its real index (not in `real`), and
        #: holding nothing. A retry takes a new lane index past them.
        self.direct_end = 0
        #: The io lane stores `run_all`'s successes in place (`batch.results`, by lane
        #: index) and only counts them (`batch.filled`): they never reach `emit_ok`.
        #: Then a success stored under a retry's lane index is moved to its real index
        #: at the end (`move_filled`), and `in_flight` still counts every success.
        self.filled_by: Batch | None = batch if batch.results is not None else None
        #: ... and successes it timed one by one, in this list until it counts them
        #: into `batch.filled` in bulk: one entry each (set by the io lane).
        self.uncounted: list[float] = []
        #: With limiters, a success may make room for the next admission: wake a
        #: waiting lane on each. retry= alone: only when none is left in flight.
        self.wake_on_ok = controls.fixed != ()
        #: The limiters of each attempt handed out, by lane index: a `_Hold` for
        #: blocking tasks (their thread releases it), the limiters themselves else.
        self.holds: dict[int, Any] = {}
        self.dying: dict[int, Any] = {}  # cpu: timed out, worker alive (lane index)
        self.gone_first: set[int] = set()  # reaped before their timeout reached emit
        self.dying_lock = threading.Lock()
        self.gone_watched = False  # the lane calls task_gone (tasklanes' own process pool)
        self.tasks: dict[int, Any] = {}  # retry, lazy input: the task, to run it again
        self.keep_tasks = controls.retry is not None and not inner.in_memory
        self.attempt: dict[int, int] = {}  # retry: the attempt now running, once >= 2
        self.tally = Tally()
        self.spawn: Callable[..., None] | None = None
        self._event: anyio.Event | None = None
        self.size = inner.size
        # Lazy admission (see the module docstring), once a lane asks for it:
        #: the call's fixed limiters, taken by the lane as it starts each task;
        self.lazy: tuple[Limiter, ...] = ()
        #: while True, `take` hands tasks out unadmitted (it ends for good at the
        #: first task the limiters refuse);
        self.lazy_on = False
        #: lane indexes below this were handed out lazily: each is its real index,
        #: and its limiters are taken by the lane (io: released at its outcome);
        self.lazy_end = 0
        #: io: lazily admitted tasks without an outcome yet (released at `close`).
        self.lazy_held = 0
        self.lazy_io = False  # the lane releases lazily taken limiters at the outcome
        self.lazy_single: Limiter | None = None
        #: io: a finished task's permit, passed on to the task its worker starts next
        #: (`emit_ok`, `_admit_lazily`); given back at `close` if it never started.
        self.passed_on = False
        self._lazy_take: Callable[[], bool] = bool
        self._lazy_give: Callable[[], None] = _nothing
        #: tasks that lazy admission refused, back in the waiting path's queue:
        #: `(real index, task)`, in input order, taken before the input.
        self.backlog: deque[tuple[int, Any]] = deque()
        #: Fixed limiters: tasks waiting for them, in input order (`_wait_in_order`).
        self.queue: deque[tuple[int, Any]] = deque()

    # -- what a lane reads -------------------------------------------------------------

    @property
    def pulled(self) -> int:
        """Tasks handed to the lane so far: the next lane index."""
        return self.handed

    @property
    def in_memory(self) -> bool:
        # Pull as the lane has room, each task passing admission; a list whose tasks
        # need no admission (retry= alone) or that the lane admits as it starts them
        # may be taken whole.
        return (self.lazy_on or self.controls.fixed == ()) and self.inner.in_memory

    @property
    def exhausted(self) -> bool:
        """Nothing more will ever be handed out."""
        return self.inner_done and self._ended()

    def _ended(self) -> bool:
        if self.ready or self.pending or self.reading or self.backlog:
            return False
        if self.retry is None:
            return True
        # With retry, none can come back once none is in flight.
        in_flight = self.in_flight
        if self.filled_by is not None:  # successes stored in place, counted by the lane
            in_flight -= self.filled_by.filled + len(self.uncounted)
        return in_flight == 0

    def recheck(self) -> None:
        """The io lane has counted successes it stored in place (`filled_by`): a
        lane waiting for the input (`next`) looks again whether any can come back."""
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def move_filled(self, results: list[Any]) -> None:
        """`filled_by`, once the batch is over: move each success stored under a
        retry's lane index (the entries left in `real`: a failure pops its own) to the
        task's real index, then drop the lane indexes past the input."""
        for lane_index, index in self.real.items():
            results[index] = results[lane_index]
        del results[self.inner.pulled :]

    def take_rest(self) -> None:
        return None

    def set_gate(
        self, gate: Callable[[int], bool], room: Callable[[int], int] | None = None
    ) -> None:
        self.inner.set_gate(gate, room)

    def release(self) -> None:
        self.inner.release()
        self._wake()  # the gate may let more in now

    def blocked(self) -> bool:
        # Asked once `take` found nothing: whatever comes next (an admission, a retry,
        # the gate, an async input) wakes the lane (`batch.wake`).
        return not self.ready and self.error is None

    def close(self) -> None:
        self.inner.close()
        self.inner_done = True
        # The lane has stopped and no work of the batch runs any more: what is still
        # held belongs to attempts that never started (or to cpu tasks whose workers
        # the pool has reaped), so give it back.
        for _, _, limiters in self.ready:
            _release(limiters)
        self.ready.clear()
        self.backlog.clear()
        for _ in range(self.lazy_held + self.passed_on):  # io: started, then cancelled
            release_all(self.lazy)
        self.lazy_held = 0
        self.passed_on = False
        for held in self.holds.values():
            _release(held)
        self.holds.clear()
        with self.dying_lock:
            dying = list(self.dying.values())
            self.dying.clear()
        for held in dying:
            _release(held)

    def take(self, n: int) -> list[Any]:
        """Up to `n` admitted tasks, without waiting; their lane indexes are
        consecutive from `pulled` as it was before the call."""
        if self.error is not None:
            exc, self.error = self.error, None
            self.inner_done = True
            raise exc
        if self.lazy_on:
            return self._take_lazily(n)
        out: list[Any] = []
        ready = self.ready
        while ready and len(out) < n:
            out.append(self._hand(*ready.popleft()))
        if len(out) < n and (self.backlog or not self.inner_done) and not self.reading:
            self._pull(n, out)
        return out

    def _pull(self, n: int, out: list[Any]) -> None:
        """Take tasks from the input and admit them, until `out` has `n`, the input
        has none without waiting, or `limit` are admitted or waiting."""
        inner = self.inner
        # The common case inline (one fixed limiter, no retry, not blocking): no
        # tuple and no call per task beyond the limiter's own.
        fixed = self.controls.fixed
        single = (
            fixed[0]
            if fixed is not None and len(fixed) == 1 and not self.keep_tasks
            and self.kind != "blocking"
            else None
        )
        real = self.real
        holds = self.holds
        backlog = self.backlog
        while len(out) < n and self.in_flight < self.cap:
            room = min(n - len(out), self.cap - self.in_flight)
            if backlog:  # refused by lazy admission: they come before the input
                items = [backlog.popleft() for _ in range(min(room, len(backlog)))]
                self.in_flight += len(items)
                for index, task in items:
                    admitted = self._admit(index, task)
                    if admitted is not None:
                        out.append(self._hand(*admitted))
                continue
            start = inner.pulled
            got = inner.take(room)
            if not got:
                if inner.exhausted:
                    self.inner_done = True
                elif inner.is_async:
                    self._read_later()
                return  # else a closed gate: `release` wakes the lane
            self.in_flight += len(got)
            if fixed == ():
                # No limiters (retry= alone): hand them all out in bulk.
                handed = self.handed
                self.handed = handed + len(got)
                indexes = range(start, start + len(got))
                if handed == start == self.direct_end:
                    # No retry handed out before them: their own indexes (`direct_end`).
                    self.direct_end = self.handed
                else:
                    real.update(zip(range(handed, self.handed), indexes, strict=True))
                if self.keep_tasks:
                    self.tasks.update(zip(indexes, got, strict=True))
                out.extend(got)
                continue
            for index, task in enumerate(got, start):
                if single is not None and not self.queue and single.try_acquire():
                    lane_index = self.handed
                    self.handed = lane_index + 1
                    real[lane_index] = index
                    holds[lane_index] = fixed  # released at its outcome (see emit)
                    out.append(task)
                    continue
                admitted = self._admit(index, task)
                if admitted is not None:
                    out.append(self._hand(*admitted))

    # -- lazy admission -------------------------------------------------------------

    def lazy_admission(self) -> Callable[[], bool] | None:
        """For a lane that can admit each task as it starts it: switch to lazy
        admission if this call allows it, and return what admits one task (io: call it
        as the task starts; blocking: the handed-out tasks' own `admit`, called by
        the worker thread). None: admission stays here. Asked before the first pull.

        io: the lane reports a success (`emit_ok`) from the worker that ran the task,
        and that worker, if tasks pulled are still unstarted, starts the next one
        without awaiting in between: the finished task's permit is passed on to it
        (`passed_on`) rather than released and taken again."""
        fixed = self.controls.fixed
        if (
            not fixed
            or self.retry is not None
            or self.inner.is_async
            or self.handed
            or any(limiter.rate is not None for limiter in fixed)
        ):
            return None
        self.lazy = fixed
        self.lazy_on = True
        self.lazy_end = 1 << 62
        if len(fixed) == 1:
            self._lazy_take = fixed[0].try_acquire
            self._lazy_give = fixed[0].release
        else:
            self._lazy_take = functools.partial(try_acquire_all, fixed)
            self._lazy_give = functools.partial(release_all, fixed)
        self.lazy_io = self.kind != "blocking"  # blocking: the thread admits, releases
        self.lazy_single = fixed[0] if len(fixed) == 1 and self.lazy_io else None
        return self._admit_lazily

    def _admit_lazily(self) -> bool:
        """io: the lane starts a lazily handed-out task: take its limiters, if they
        have room (never waits). On False the lane calls `not_admitted`."""
        if self.passed_on:
            self.passed_on = False  # the permit of the task that just ended
            self.lazy_held += 1
            return True
        if self._lazy_take():
            self.lazy_held += 1
            return True
        return False

    def _take_lazily(self, n: int) -> list[Any]:
        """`take` while admission is lazy: straight from the input, in bulk. The
        lane's workers bound what is admitted (at most `limit` run at once)."""
        inner = self.inner
        got = inner.take(n)
        if not got:
            if inner.exhausted:
                self.inner_done = True
            return got  # else a closed gate: `release` wakes the lane
        self.in_flight += len(got)
        self.handed += len(got)  # == inner.pulled: lane index == real index
        if self.kind == "blocking":
            lazy = self.lazy
            return [_LazyBlockingAttempt(task, lazy) for task in got]
        return got

    def not_admitted(self, lane_index: int, tasks: list[Any]) -> None:
        """The lane could not admit the lazily handed-out task `lane_index` (a
        limiter is short): it and the tasks handed out after it and not started
        (`tasks`, in order, from `lane_index` on) go the waiting way, and so does
        every later task of the call: lazy admission is over for it."""
        self.lazy_on = False
        if self.passed_on:  # (cannot be: a passed-on permit admits the next task)
            self.passed_on = False
            self._lazy_give()
        self.lazy_end = lane_index
        self.in_flight -= len(tasks)
        if self.kind == "blocking":
            tasks = [attempt.task for attempt in tasks]
        self.backlog.extend(zip(range(lane_index, lane_index + len(tasks)), tasks, strict=True))

    def _read_later(self) -> None:
        """An async input: read its next task in a small task of our own, so that the
        lane never waits for the input while a task is ready (a retry, an admission)."""
        assert self.spawn is not None
        self.reading = True
        self.spawn(self._read)

    async def _read(self) -> None:
        try:
            item = await self.inner.next()
            if item is END:
                self.inner_done = True
            else:
                self.in_flight += 1
                admitted = self._admit(*item)
                if admitted is not None:
                    self.ready.append(admitted)
        except Exception as exc:
            self.error = exc
        finally:
            self.reading = False
            self._wake()

    async def next(self) -> Any:
        """`(lane index, task)` or `END`, waiting for an admission, a retry or the input."""
        while True:
            got = self.take(1)
            if got:
                return (self.handed - 1, got[0])
            if self.exhausted:
                return END
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    # -- admission ---------------------------------------------------------------------

    def _admit(self, index: int, task: Any) -> _Admitted | None:
        """`task` with the limiters it took, or None: a small task waits for them.
        The hot path of every task."""
        if self.keep_tasks and index not in self.attempt:
            self.tasks[index] = task  # a lazy input: keep it to run it again
        limiters = self.controls.fixed
        if limiters is not None:
            # The same limiters for every task: one queue, one waiter, input order.
            queue = self.queue
            if not queue and (
                not limiters
                or (limiters[0].try_acquire() if len(limiters) == 1 else try_acquire_all(limiters))
            ):
                return (index, task, limiters)
            queue.append((index, task))
            self.pending += 1
            self._limited(1)
            if len(queue) == 1:
                assert self.spawn is not None
                self.spawn(self._wait_in_order, limiters)
            return None
        limiters = self.controls.limiters(task)
        if not limiters or (
            limiters[0].try_acquire() if len(limiters) == 1 else try_acquire_all(limiters)
        ):
            return (index, task, limiters)
        assert self.spawn is not None
        self.pending += 1
        self.spawn(self._wait_for, index, task, limiters)
        return None

    async def _wait_in_order(self, limiters: tuple[Limiter, ...]) -> None:
        """Admit the queued tasks one after another as the call's limiters allow.

        One waiter, not one per task: the tasks are admitted in input order on every
        loop (trio runs tasks started together in any order), and no task taken from
        the input later can take a permit before them (`_admit` queues it behind).

        Cancellation (the batch is over): what it took is given back
        (`acquire_all`), and the queued tasks, holding nothing, are dropped.
        """
        queue = self.queue
        try:
            while queue:
                await acquire_all(limiters)
                index, task = queue.popleft()
                self.pending -= 1
                self._limited(-1)
                self.ready.append((index, task, limiters))
                self._wake()
        finally:
            if queue:
                self._limited(-len(queue))
                self.pending -= len(queue)
                queue.clear()

    async def _wait_for(self, index: int, task: Any, limiters: tuple[Limiter, ...]) -> None:
        self._limited(1)
        try:
            await acquire_all(limiters)
        finally:
            self._limited(-1)
        self.pending -= 1
        self.ready.append((index, task, limiters))
        self._wake()

    def _limited(self, change: int) -> None:
        """Count tasks starting or ending a wait for a limiter in the `limited` figure of
        the lane the call runs on. With `kind="auto"` that lane is chosen only after the
        first task: what was counted before moves to it."""
        stats = self.lane.stats
        if stats is not self.limited_in:
            if self.limited:
                self.limited_in.adjust(limited=-self.limited)
                stats.adjust(limited=self.limited)
            self.limited_in = stats
        self.limited += change
        stats.adjust(limited=change)

    def _hand(self, index: int, task: Any, limiters: tuple[Limiter, ...]) -> Any:
        """Give an admitted task its lane index; what the lane runs."""
        lane_index = self.handed
        self.handed = lane_index + 1
        self.real[lane_index] = index
        if limiters:
            if self.kind == "blocking":
                hold = _Hold(limiters)
                self.holds[lane_index] = hold
                return _BlockingAttempt(task, hold)
            self.holds[lane_index] = limiters  # released at its outcome (see emit)
        return task

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()
        wake = self.batch.wake
        if wake is not None:
            wake()

    # -- outcomes (lane indexes in, real indexes out) ------------------------------------

    def emit(self, lane_index: int, ok: bool, value: Any) -> None:
        if lane_index < self.direct_end:  # a first attempt under its own index
            if ok:
                self._succeeded(lane_index, value)
                return
            index = lane_index
        elif lane_index < self.lazy_end:  # admitted by the lane as it started it
            index = lane_index
            if self.lazy_io:  # (blocking: its thread releases)
                self._lazy_give()
                self.lazy_held -= 1
        else:
            index = self.real.pop(lane_index)
            if self.holds:
                held = self.holds.pop(lane_index, None)
                if held is not None and self.kind != "blocking":  # its thread releases
                    if not ok and self.gone_watched and isinstance(value, TaskTimeout):
                        held = self._hold_until_gone(lane_index, held)
                    for limiter in held:
                        limiter.release()
        if (
            not ok
            and index != lane_index
            and isinstance(value, (TaskTimeout, WorkerCrashed))
            and value.index == lane_index
        ):
            value = _renumbered(value, index)
        if self.retry is not None:
            if not ok or self.attempt:
                attempt = self.attempt.pop(index, 1)
                if not ok and self._retry(index, value, attempt):
                    return
            if self.keep_tasks:
                del self.tasks[index]
        self.in_flight -= 1
        if ok:
            self.forward_ok(index, value)
        else:
            self.forward(index, ok, value)
        event = self._event
        if event is not None:  # io workers wait for room or for the end
            self._event = None
            event.set()

    def _succeeded(self, index: int, value: Any) -> None:
        """A success under its real index, with nothing left to release: to the
        caller's `emit_ok`, and wake a lane that waits for room or for the end (a
        first attempt under its own index, `direct_end`, comes straight here)."""
        if self.keep_tasks:
            del self.tasks[index]
        self.in_flight -= 1
        self.forward_ok(index, value)
        event = self._event
        if event is not None and (self.wake_on_ok or self.in_flight == 0):
            self._event = None
            event.set()

    def emit_ok(self, lane_index: int, value: Any) -> None:
        """One success (the io lane's hot path): `emit(lane_index, True, value)`."""
        if lane_index < self.direct_end:
            self._succeeded(lane_index, value)
            return
        if lane_index < self.lazy_end and self.lazy_io:  # admitted as it started
            self.lazy_held -= 1
            self.in_flight -= 1
            single = self.lazy_single
            if (
                single is not None
                and self.in_flight > self.lazy_held
                and not self.passed_on
                and not single._waiters
                and self.lazy_on
            ):
                # The io worker that reported this starts the next task at once, with
                # no await in between (tasks pulled and not started: in_flight -
                # lazy_held): pass it this permit instead of a release and an acquire.
                # Nobody waits for the limiter, so nobody is overtaken.
                self.passed_on = True
            else:
                self._lazy_give()
            self.forward_ok(lane_index, value)
            event = self._event
            if event is not None:
                self._event = None
                event.set()
            return
        if self.attempt or self.kind == "blocking":
            self.emit(lane_index, True, value)
            return
        index = self.real.pop(lane_index)
        if self.holds:
            held = self.holds.pop(lane_index, None)
            if held is not None:
                for limiter in held:
                    limiter.release()
        self._succeeded(index, value)

    def emit_ok_many(self, lane_indexes: Sequence[int], values: list[Any]) -> None:
        direct_end = self.direct_end
        indexes: Sequence[int]
        if (
            direct_end
            and not self.attempt
            and lane_indexes
            # First attempts, each under its own index: nothing to translate.
            and (lane_indexes[-1] if type(lane_indexes) is range else max(lane_indexes))
            < direct_end
        ):
            indexes = lane_indexes
        elif self.holds or self.attempt or self.lazy_end or direct_end:
            for lane_index, value in zip(lane_indexes, values, strict=True):
                self.emit(lane_index, True, value)
            return
        else:
            pop = self.real.pop
            indexes = [pop(lane_index) for lane_index in lane_indexes]
        self.in_flight -= len(values)
        if self.keep_tasks:
            for index in indexes:
                del self.tasks[index]
        self.forward_ok_many(indexes, values)
        event = self._event
        if event is not None and (self.wake_on_ok or self.in_flight == 0):
            self._event = None
            event.set()

    def _retry(self, index: int, exc: BaseException, attempt: int) -> bool:
        """Run a failed task again if its Retry says so; else note the attempts."""
        retry = self.retry
        assert retry is not None
        if retry.should_retry(exc, attempt) and not self.batch.stopping:
            self.tally.retried += 1
            self.attempt[index] = attempt + 1
            self.pending += 1
            assert self.spawn is not None
            self.spawn(self._retry_later, index, retry.delay(attempt))
            return True
        if attempt > 1:
            note_attempts(exc, attempt)
        return False

    async def _retry_later(self, index: int, delay: float) -> None:
        await anyio.sleep(delay)  # holding no limiter
        self.pending -= 1
        task = self.tasks[index] if self.keep_tasks else self.inner.task_at(index)
        admitted = self._admit(index, task)
        if admitted is not None:
            self.ready.append(admitted)
            self._wake()

    # -- cpu: a timed-out task holds its limiters until its worker is gone --------------

    def watch_gone(self) -> Callable[[int], None]:
        """For a lane that can tell when a killed task's worker is gone: hold a timed-out
        task's limiters until then (other lanes release them at the outcome)."""
        self.gone_watched = True
        return self.task_gone

    def _hold_until_gone(self, lane_index: int, held: tuple[Limiter, ...]) -> tuple[Limiter, ...]:
        """What to release now of a timed-out cpu task's limiters: nothing while its
        worker lives (see `task_gone`), everything if the pool reaped it already."""
        with self.dying_lock:
            if lane_index in self.gone_first:
                self.gone_first.discard(lane_index)
                return held
            self.dying[lane_index] = held
            return ()

    def task_gone(self, lane_index: int) -> None:
        """Any thread: the worker of a timed-out cpu task is gone; release its limiters.

        The pool may reap the worker before or after the timeout reaches `emit` (lane
        indexes are never reused, so either order is unambiguous)."""
        with self.dying_lock:
            held = self.dying.pop(lane_index, None)
            if held is None:
                self.gone_first.add(lane_index)
        if held is not None:
            _release(held)
