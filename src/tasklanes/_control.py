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
* **Retry.** A failed outcome that the call's [`Retry`][tasklanes.Retry] wants again
  never reaches the batch's `emit`: the task waits out its backoff holding nothing,
  then goes back through admission. The source says `END` only when no task of the
  batch can come back any more.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import TaskTimeout
from ._limits import Limiter, acquire_all, resolve_limiter_arg, try_acquire_all
from ._retry import Retry, check_retry, check_retryable_task, note_attempts
from ._stats import Tally
from ._tasks import END, WAIT

if TYPE_CHECKING:
    from ._batch import Batch, Lane
    from ._tasks import Source

__all__ = ["Controls", "ControlledSource", "make_controls"]


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
        source = ControlledSource(batch.source, self, batch, lane.kind)
        batch.source = source  # type: ignore[assignment]
        batch.emit = source.emit
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


class ControlledSource:
    """What the lane pulls from when a call has controls; see the module docstring.

    Everything here runs on the caller's loop, except `_Hold.release` (any thread)
    and `task_gone` (the process pool's manager thread).
    """

    def __init__(self, inner: Source, controls: Controls, batch: Batch, kind: str) -> None:
        self.inner = inner
        self.controls = controls
        self.retry = controls.retry
        self.batch = batch
        self.kind = kind
        self.limit = batch.limit
        self.forward = batch.emit
        self.forward_ok_many = batch.emit_ok_many
        self.ready: deque[tuple[int, Any]] = deque()
        self.in_flight = 0  # pulled and without a final outcome yet
        self.pending = 0  # waiting for a limiter or a backoff
        # At most `limit` tasks admitted or waiting; without limiters there is no
        # budget to hoard, and the lane bounds what it pulls itself.
        self.cap = self.limit if controls.fixed != () else 1 << 62
        self.inner_done = False
        self.inner_waits = False  # the input itself said WAIT (a gate, an async iterator)
        #: The current attempt's limiters, by index: a `_Hold` for blocking tasks (their
        #: thread releases it), the limiters themselves for the others.
        self.holds: dict[int, Any] = {}
        self.dying: dict[int, list[tuple[Limiter, ...]]] = {}  # cpu: timed out, worker alive
        self.dying_lock = threading.Lock()
        self.gone_watched = False  # the lane calls task_gone (tasklanes' own process pool)
        self.gone_first: dict[int, int] = {}  # reaped before their timeout reached emit
        self.tasks: dict[int, Any] = {}  # retry, lazy input: the task, to run it again
        self.keep_tasks = controls.retry is not None and not inner.in_memory
        self.attempt: dict[int, int] = {}  # retry: the attempt now running, once >= 2
        self.tally = Tally()
        self.spawn: Callable[..., None] | None = None
        self._event: anyio.Event | None = None
        self.size = inner.size

    # -- what a lane reads -------------------------------------------------------------

    @property
    def pulled(self) -> int:
        return self.inner.pulled

    @property
    def in_memory(self) -> bool:
        return False  # pull one by one: each task passes admission

    @property
    def exhausted(self) -> bool:
        return self.inner_done and not self.ready and self.in_flight == 0

    def _ended(self) -> bool:
        """Nothing more will ever be handed out: the input is done, nothing waits for a
        limiter, and (with retry) no task can come back."""
        if self.ready or self.pending:
            return False
        return self.retry is None or self.in_flight == 0

    def take_rest(self) -> None:
        return None

    def set_gate(self, gate: Callable[[int], bool]) -> None:
        self.inner.set_gate(gate)

    def release(self) -> None:
        self.inner.release()

    def close(self) -> None:
        self.inner.close()
        self.inner_done = True
        # The lane has stopped and no work of the batch runs any more: what is still
        # held belongs to attempts that never started (or to cpu tasks whose workers
        # the pool has reaped), so give it back.
        for held in self.holds.values():
            _release(held)
        self.holds.clear()
        with self.dying_lock:
            dying = [hold for holds in self.dying.values() for hold in holds]
            self.dying.clear()
        for limiters in dying:
            _release(limiters)

    def blocked(self) -> bool:
        if self.ready:
            return False
        if self.inner_waits and self.in_flight < self.cap and not self.inner_done:
            return self.inner.blocked()
        return True  # a limiter, a backoff or an outcome will wake the lane

    def next_nowait(self) -> Any:
        if self.ready:
            return self.ready.popleft()
        self.inner_waits = False
        if self.inner_done:
            return END if self._ended() else WAIT
        if self.in_flight >= self.cap:
            return WAIT
        item = self.inner.next_nowait()
        if item is END:
            self.inner_done = True
            return END if self._ended() else WAIT
        if item is WAIT:
            self.inner_waits = True
            return WAIT
        self.in_flight += 1
        return self._admit(item)

    async def next(self) -> Any:
        while True:
            item = self.next_nowait()
            if item is not WAIT:
                return item
            if self.inner_waits:
                item = await self.inner.next()
                if item is END:
                    self.inner_done = True
                    continue
                self.in_flight += 1
                item = self._admit(item)
                if item is not WAIT:
                    return item
                continue
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    # -- admission ---------------------------------------------------------------------

    def _admit(self, item: tuple[int, Any]) -> Any:
        """`item`, admitted (its task wrapped when it must release in a thread), or
        WAIT: a small task waits for its limiters. The hot path of every task."""
        index, task = item
        if self.keep_tasks and index not in self.attempt:
            self.tasks[index] = task  # a lazy input: keep it to run it again
        limiters = self.controls.fixed
        if limiters is None:
            limiters = self.controls.limiters(task)
        if not limiters:
            return item
        if limiters[0].try_acquire() if len(limiters) == 1 else try_acquire_all(limiters):
            if self.kind != "blocking":
                self.holds[index] = limiters  # released at its outcome (see emit)
                return item
            return (index, self._attempt(index, task, limiters))
        assert self.spawn is not None
        self.pending += 1
        self.spawn(self._wait_for, index, task, limiters)
        return WAIT

    async def _wait_for(self, index: int, task: Any, limiters: tuple[Limiter, ...]) -> None:
        await acquire_all(limiters)
        self.pending -= 1
        self.ready.append((index, self._attempt(index, task, limiters)))
        self._wake()

    def _attempt(self, index: int, task: Any, limiters: tuple[Limiter, ...]) -> Any:
        if self.kind == "blocking":
            hold = _Hold(limiters)
            self.holds[index] = hold
            return _BlockingAttempt(task, hold)
        self.holds[index] = limiters  # released at its outcome (see emit)
        return task

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()
        wake = self.batch.wake
        if wake is not None:
            wake()

    # -- outcomes ----------------------------------------------------------------------

    def emit(self, index: int, ok: bool, value: Any) -> None:
        if self.holds:
            held = self.holds.pop(index, None)
            if held is not None and self.kind != "blocking":  # blocking: its thread releases
                if not ok and self.gone_watched and isinstance(value, TaskTimeout):
                    held = self._hold_until_gone(index, held)
                for limiter in held:
                    limiter.release()
        if self.retry is not None:
            if not ok or self.attempt:
                attempt = self.attempt.pop(index, 1)
                if not ok and self._retry(index, value, attempt):
                    return
            if self.keep_tasks:
                del self.tasks[index]
        self.in_flight -= 1
        self.forward(index, ok, value)
        event = self._event
        if event is not None:  # io workers wait for room or for the end
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

    def _hold_until_gone(self, index: int, held: tuple[Limiter, ...]) -> tuple[Limiter, ...]:
        """A timed-out cpu task: keep its limiters until its worker is gone; return what
        to release now (everything, if the pool reaped the worker already)."""
        with self.dying_lock:
            gone = self.gone_first.get(index, 0)
            if gone:
                self.gone_first[index] = gone - 1
                return held
            self.dying.setdefault(index, []).append(held)  # see task_gone
            return ()

    def emit_ok_many(self, indexes: list[int], values: list[Any]) -> None:
        if self.holds or self.attempt:
            for index, value in zip(indexes, values, strict=True):
                self.emit(index, True, value)
            return
        self.in_flight -= len(indexes)
        if self.keep_tasks:
            for index in indexes:
                del self.tasks[index]
        self.forward_ok_many(indexes, values)
        self._wake()

    async def _retry_later(self, index: int, delay: float) -> None:
        await anyio.sleep(delay)  # holding no limiter
        self.pending -= 1
        task = self.tasks[index] if self.keep_tasks else self.inner.task_at(index)
        item = self._admit((index, task))
        if item is not WAIT:
            self.ready.append(item)
            self._wake()

    def watch_gone(self) -> Callable[[int], None]:
        """For a lane that can tell when a killed task's worker is gone: hold a timed-out
        task's limiters until then (other lanes release them at the outcome)."""
        self.gone_watched = True
        return self.task_gone

    def task_gone(self, index: int) -> None:
        """Any thread: the worker of a timed-out cpu task is gone; release its limiters."""
        with self.dying_lock:
            holds = self.dying.get(index)
            limiters = holds.pop(0) if holds else None
            if holds is not None and not holds:
                del self.dying[index]
            if limiters is None:
                self.gone_first[index] = self.gone_first.get(index, 0) + 1
        if limiters is not None:
            _release(limiters)
