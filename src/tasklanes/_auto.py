"""`kind="auto"`: tasklanes picks the lane by looking at the tasks and measuring them.

* An awaitable, or a callable that calls an `async def` function, runs on the io lane.
* Sync callables start on the blocking lane, the first ones **one at a time**, each
  wrapped in a [`_Probe`][] that reads its thread's CPU time and the time the thread
  was runnable but had no core (Linux's `schedstat`, as the kind advice does). Alone,
  a task is not slowed by others holding the GIL, so the share is the task's own.
  Probing stops once the probes have run `BLOCKING_MIN_SECONDS` (50 ms) in all, or
  after `PROBE_MAX_TASKS` tasks. A probe still running after `EARLY_LOOK` seconds is
  judged on what it did so far, and the rest of the batch starts meanwhile.
* They *compute* when their thread computed at least 80% of at least 50 ms (the kind
  advice's rule). Computing tasks that the cpu lane accepts (its own check, so
  whatever pickles there) are then run two at a time on threads: if both still
  compute, the code releases the GIL (hashlib on big buffers, zlib, numpy) and
  threads run it in parallel without pickling anything, so it stays on the blocking
  lane; if they take turns, the rest of the batch moves to the cpu lane. Everything
  else runs on the blocking lane at full width.

A batch is routed as a whole: every task of an auto batch must be async or every
task sync (a mixed batch is refused with a `TypeError`, before anything runs for a
list). The rest of the batch runs on its lane exactly as with an explicit kind: the
lane pulls from the same input, so indexes, input order, `timeout`, `limit`,
fail-fast, `return_exceptions` and cancellation behave the same, and no task runs
twice (a probe's outcome is the task's outcome).

Decisions are kept per function and [Scheduler][tasklanes.Scheduler]
(`AutoRouter`, at most `MAX_DECISIONS` functions, least recently used dropped): the
next batch of the same function goes straight to its lane. A measured decision is
measured again once it is `DECISION_TTL` seconds old. Each decision is logged at
INFO on `logging.getLogger("tasklanes.auto")` and listed in `stats()[kind].auto`.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._advice import BLOCKING_CPU_SHARE, BLOCKING_MIN_SECONDS, _describe, _key_of, thread_times
from ._batch import Batch
from ._call import unwrap_callable
from ._snapshots import _ItemAccess
from ._stats import LaneStats
from ._subbatch import One, Resumed, SubBatch, run_sub
from ._tasks import END, _is_async_function, close_if_coroutine, describe

if TYPE_CHECKING:
    from ._batch import Lane
    from ._scheduler import Scheduler
    from ._snapshots import LaneSnapshot

__all__ = [
    "AUTO",
    "DECISION_TTL",
    "EARLY_LOOK",
    "MAX_DECISIONS",
    "PROBE_MAX_TASKS",
    "AutoDecision",
    "AutoLane",
    "AutoRouter",
    "judge",
]

logger = logging.getLogger("tasklanes.auto")

AUTO: Final = "auto"
#: Probing stops after this many tasks even if they ran less than 50 ms in all: such
#: short tasks gain nothing from a worker process.
PROBE_MAX_TASKS = 64
#: A probe still running after this many seconds is judged on what it did so far.
EARLY_LOOK = BLOCKING_MIN_SECONDS
#: The pair stage gives up after this many tasks (pairs of very short tasks may never
#: overlap enough to tell): then the computing code goes to the cpu lane.
_PAIR_MAX_TASKS = 16
#: Two tasks at once that each compute at least this share of the time run in
#: parallel (they release the GIL). Taking turns for the GIL gives 50% each (33% next
#: to a third); code that releases it measures 70% to 100% on a loaded machine (it
#: still waits for the GIL between its parts).
_PARALLEL_SHARE = 0.65
#: An early look decides "it waits" only below this share (between it and 80%: look
#: again later, or judge the whole task).
_CLEARLY_WAITING = 0.3
#: A measured decision is measured again once it is this old (seconds).
DECISION_TTL = 600.0
#: Functions whose decision is kept per Scheduler (least recently used dropped).
MAX_DECISIONS = 256


@dataclass(frozen=True)
class AutoDecision(_ItemAccess):
    """What `kind="auto"` decided for one function (see `Scheduler.stats()`).

    `function` is the module and qualified name, `kind` the lane it runs on, `reason`
    why in words. For sync code, `cpu_share` is the share of the time its thread
    could run that it spent computing, `wall` the seconds measured and `tasks` how
    many tasks were measured (io decisions measure nothing: `None`, `None`, 0).
    `decided_at` is a `time.monotonic()` reading.
    """

    function: str
    kind: str
    reason: str
    cpu_share: float | None
    wall: float | None
    tasks: int
    decided_at: float


def judge(cpu: float, wall: float, runnable: float = 0.0) -> tuple[bool, float]:
    """`(computes, share)`: the kind advice's rule, >= 80% of >= 50 ms computing.

    `runnable` is the time the thread was ready but had no core (a loaded machine),
    which is neither computing nor waiting in a sync call: it is left out.
    """
    could_run = max(wall - max(runnable, 0.0), cpu)
    share = min(cpu / could_run, 1.0) if could_run > 0 else 0.0
    return wall >= BLOCKING_MIN_SECONDS and share >= BLOCKING_CPU_SHARE, share


class AutoRouter:
    """The decisions of one Scheduler, per function; thread-safe and bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: OrderedDict[object, AutoDecision] = OrderedDict()

    def cached(self, key: object) -> AutoDecision | None:
        """The decision for `key`, unless there is none or it is due for measuring."""
        with self._lock:
            decision = self._decisions.get(key)
            if decision is None:
                return None
            if decision.kind != "io" and time.monotonic() - decision.decided_at > DECISION_TTL:
                return None  # measured again; the new decision replaces it
            self._decisions.move_to_end(key)
            return decision

    def record(self, key: object, decision: AutoDecision) -> None:
        """Keep `decision` and log it (an io decision only the first time)."""
        with self._lock:
            old = self._decisions.get(key)
            self._decisions[key] = decision
            self._decisions.move_to_end(key)
            while len(self._decisions) > MAX_DECISIONS:
                self._decisions.popitem(last=False)
        if decision.kind == "io" and old is not None:
            return
        _log_decision(decision, logging.INFO)

    def decisions(self) -> list[AutoDecision]:
        with self._lock:
            return list(self._decisions.values())

    def annotate(self, snapshots: dict[str, LaneSnapshot]) -> dict[str, LaneSnapshot]:
        """`snapshots` with each lane's `auto` field: the decisions for that lane."""
        by_kind: dict[str, list[AutoDecision]] = {}
        for decision in self.decisions():
            by_kind.setdefault(decision.kind, []).append(decision)
        for kind, found in by_kind.items():
            snap = snapshots.get(kind)
            if snap is not None:
                found.sort(key=lambda d: d.function)
                snapshots[kind] = replace(snap, auto=tuple(found))
        return snapshots


def _log_decision(decision: AutoDecision, level: int) -> None:
    if decision.cpu_share is None or decision.wall is None:
        measured = ""
    else:
        measured = (
            f" (thread CPU {decision.cpu_share:.0%} of {decision.wall:.3f} s, "
            f"{decision.tasks} task{'s' if decision.tasks != 1 else ''} measured)"
        )
    logger.log(
        level,
        "kind='auto': %s runs on kind=%r: %s%s",
        decision.function,
        decision.kind,
        decision.reason,
        measured,
        extra={
            "function": decision.function,
            "kind": decision.kind,
            "reason": decision.reason,
            "cpu_share": decision.cpu_share,
            "wall": decision.wall,
            "tasks": decision.tasks,
        },
    )


# -- telling tasks apart ----------------------------------------------------------------


class _Mode(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"


def _mode_of(task: object) -> _Mode | None:
    if inspect.isawaitable(task):
        return _Mode.ASYNC
    if not callable(task):
        return None
    return _Mode.ASYNC if _is_async_function(unwrap_callable(task)) else _Mode.SYNC


def _identify(task: object) -> tuple[object, str]:
    """`(key, name)` of the function a task runs: decisions are kept per key."""
    code = getattr(task, "cr_code", None)
    if code is not None:  # a coroutine object
        module = getattr(task, "cr_frame", None)
        mod = module.f_globals.get("__name__") if module is not None else None
        return code, f"{mod}.{code.co_qualname}" if mod else code.co_qualname
    if inspect.isawaitable(task):
        kind = type(task)
        return kind, f"{kind.__module__}.{kind.__qualname__}"
    fn = unwrap_callable(task)
    name, _, _, module = _describe(fn)
    return _key_of(fn), f"{module}.{name}" if module else name


# -- measuring ---------------------------------------------------------------------------


class _Probe:
    """A sync task that measures itself on its thread: CPU time, wall time, and the
    time the thread was runnable without a core (0.0 where that cannot be read)."""

    __slots__ = (
        "__tasklanes_wrapped__", "cpu", "ident", "native_id", "runnable", "started", "task",
        "times", "wall",
    )  # fmt: skip

    def __init__(self, task: Callable[[], Any], index: int) -> None:
        self.task = task
        self.__tasklanes_wrapped__ = task  # advice and checks see the user's function
        self.started = -1.0
        self.native_id = 0
        self.ident = 0
        self.times: tuple[float, float] | None = None
        self.cpu = self.wall = self.runnable = -1.0

    def __call__(self) -> Any:
        # CPU time from the thread's CPU clock (exact); the time runnable without a
        # core from the scheduler's figures (`schedstat`), where they can be read.
        self.native_id = threading.get_native_id()
        self.ident = threading.get_ident()
        times = thread_times(self.native_id, self.ident)
        cpu0 = time.thread_time()
        self.times = (cpu0, times[1] if times is not None else 0.0)
        self.started = time.monotonic()
        try:
            result = self.task()
        finally:
            wall = time.monotonic() - self.started
            self.cpu = time.thread_time() - cpu0
            after = thread_times(self.native_id, self.ident) if times is not None else None
            self.runnable = after[1] - self.times[1] if after is not None else 0.0
            self.wall = wall
        if inspect.isawaitable(result):
            close_if_coroutine(result)
            raise TypeError(
                f"kind='auto' took {describe(self.task)} for sync code, but it returned "
                f"{type(result).__name__}: give the coroutine itself or call(async_fn, ...) "
                "so that auto sees async code, or use kind='io'"
            )
        return result

    @property
    def finished(self) -> bool:
        return self.wall >= 0

    def look(self) -> tuple[float, float, float] | None:
        """`(cpu, wall, runnable)` so far, read from another thread; None if unknown."""
        if self.started < 0 or self.times is None:
            return None
        try:  # the thread's CPU clock is exact; `schedstat` lags a running thread
            cpu = time.clock_gettime(time.pthread_getcpuclockid(self.ident))
        except (AttributeError, OSError):
            return None
        wall = time.monotonic() - self.started
        times = thread_times(self.native_id, self.ident)
        runnable = times[1] - self.times[1] if times is not None else 0.0
        return cpu - self.times[0], wall, runnable


def _overlapped(a: _Probe, b: _Probe, figures: list[tuple[float, float, float]]) -> bool:
    """The two probes ran at the same time for most of the shorter one's measure.

    Two tasks that hold the GIL and overlap by 80% of their time compute at most 100%
    of the rest and 50% of that, 60% in all: under `_PARALLEL_SHARE`.
    """
    (_, wall_a, _), (_, wall_b, _) = figures
    start = max(a.started, b.started)
    end = min(a.started + wall_a, b.started + wall_b)
    return end - start >= 0.8 * min(wall_a, wall_b) > 0


class _AutoCheck:
    """The check of one auto call's tasks: a task at all, and async or sync like the
    first one. Coroutines are `trusted`: a list of nothing else is not checked task by
    task (it is all async)."""

    __slots__ = ("first", "mode")

    trusted: frozenset[type] = frozenset({CoroutineType})

    def __init__(self) -> None:
        self.mode: _Mode | None = None
        self.first = 0

    def __call__(self, task: object, index: int) -> None:
        mode = _Mode.ASYNC if type(task) is CoroutineType else _mode_of(task)
        if mode is None:
            raise TypeError(
                f"task {index} ({describe(task)}) is not a task for kind='auto': give a "
                "coroutine, an awaitable or call(async_fn, ...) for async code, or a "
                "zero-argument callable such as call(fn, *args) for sync code"
            )
        if self.mode is None:
            self.mode, self.first = mode, index
        elif mode is not self.mode:
            raise TypeError(
                f"kind='auto' routes a batch as a whole, and this one mixes async and sync "
                f"tasks: task {self.first} is {self.mode.value}, task {index} "
                f"({describe(task)}) is {mode.value}. Run them as two batches, or give "
                "kind='io', 'blocking' or 'cpu'"
            )


# -- the lane ------------------------------------------------------------------------------

_no_stats: LaneStats | None = None


def _shared_stats() -> LaneStats:
    global _no_stats
    if _no_stats is None:
        _no_stats = LaneStats(AUTO, 0)
    return _no_stats


class AutoLane:
    """One `kind="auto"` call: checks its tasks, then routes its batch (see the module).

    Made per call by the Scheduler (cheap): it remembers whether the call's tasks are
    async or sync, and the call's own `limit`.

    Cancellation: as for the lane the batch runs on, plus the probes, which are
    blocking tasks: asked to stop (`check_cancelled()` raises in them) and waited
    for, so no work of the batch outlives the call. A probe that overruns `timeout`
    fails at once, and its thread runs on until it returns, as any blocking task's.
    """

    kind = AUTO

    def __init__(self, sched: Scheduler, router: AutoRouter, limit: int | None) -> None:
        self._sched = sched
        self._router = router
        self._limit = limit
        self.check_task = _AutoCheck()
        self._stats = _shared_stats()  # until a lane is chosen (see `stats`)
        # The batch's limit when the call gives none: wide enough for any lane (each
        # sub-batch is bounded by its own lane's capacity).
        self.capacity = limit if limit is not None else max(
            sched.capacity("io"), sched.capacity("blocking"), sched.capacity_or_default()
        )  # fmt: skip

    @property
    def stats(self) -> LaneStats:
        """The figures of the lane this batch runs on, once chosen: what the controls
        (`limiter=`, `retry=`) count at the end of a batch, `retried`, goes there."""
        return self._stats

    @stats.setter
    def stats(self, value: LaneStats) -> None:
        self._stats = value

    def close(self) -> None:
        pass

    # -- running a batch

    async def run(self, batch: Batch) -> None:
        source = batch.source
        try:
            item = await source.next()
        except Exception as exc:
            batch.fail(exc)
            return
        if item is END:
            return
        index, task = item
        key, name = _identify(task)
        if _mode_of(task) is _Mode.ASYNC:
            self._router.record(
                key,
                AutoDecision(name, "io", "async code runs on the event loop", None, None, 0,
                             time.monotonic()),
            )  # fmt: skip
            await self._delegate("io", batch, [item], self._limit)
            return
        decision = self._router.cached(key)
        if decision is not None:
            await self._delegate(decision.kind, batch, [item], self._limit)
            return
        await self._measure(batch, index, task, key, name)

    async def _delegate(
        self, kind: str, batch: Batch, back: list[tuple[int, Any]], limit: int | None
    ) -> None:
        lane = self._sched._lane(kind)
        self._stats = lane.stats
        if kind == "blocking":
            from ._nested import refuse_nested_blocking

            refuse_nested_blocking(lane)
        view = Resumed(batch.source, back, lane.check_task)
        sub = SubBatch(batch, view, lane.capacity if limit is None else limit)
        await run_sub(lane, sub, batch)

    async def _probe(self, lane: Lane, batch: Batch, probe: _Probe, index: int,
                     done: anyio.Event) -> None:  # fmt: skip
        def emit(i: int, ok: bool, value: Any) -> None:
            done.set()
            batch.emit(i, ok, value)

        try:
            await run_sub(lane, SubBatch(batch, One(index, probe), 1, emit), batch)
        finally:
            done.set()

    async def _measure(self, batch: Batch, index: int, task: Any, key: object, name: str) -> None:
        """Probe the first sync tasks on the blocking lane, decide, and run the rest of
        the batch on the chosen lane.

        Stage 1, one at a time: does it compute? Stage 2, only for code that computes
        and could go to the cpu lane, two at a time: does it compute *in parallel* on
        threads (it releases the GIL, as hashlib on big buffers or numpy do)? Then
        threads serve it as well as processes, without pickling: blocking.
        """
        from ._nested import refuse_nested_blocking

        sched = self._sched
        blocking = sched._lane("blocking")
        refuse_nested_blocking(blocking)
        advisor = getattr(sched, "_advisor", None)
        if advisor is not None:  # auto says where it goes: no advice on top
            advisor.silence(unwrap_callable(task))
        async with anyio.create_task_group() as tg:
            solo = await self._solo(tg, blocking, batch, index, task)
            if solo is None:
                return  # the batch failed or stopped
            (cpu, wall, runnable), measured, running, last, ended = solo
            computes, share = judge(cpu, wall, runnable)
            kind, reason = self._choose(computes, share, wall, measured, *last)
            back: list[tuple[int, Any]] = []
            if kind == "cpu" and not ended and (self._limit or 3) >= 2 + running:
                # (A first task still running computes too: the pair competes with it
                # for the GIL, which only makes code that holds it plainer.)
                pair = await self._pairs(tg, blocking, batch, running)
                if pair is None:
                    return
                figures, tested, still, back, ended = pair
                running += still
                if tested:
                    measured += tested
                    pair_share = judge(*figures)[1]
                    if figures[1] >= BLOCKING_MIN_SECONDS / 2 and pair_share >= _PARALLEL_SHARE:
                        kind = "blocking"
                        reason = (
                            f"it computes ({share:.0%}) but releases the GIL: two tasks at "
                            f"once each computed {pair_share:.0%} of the time, so threads "
                            "run it in parallel, without pickling"
                        )
                    else:
                        reason += f" (two at once on threads: {pair_share:.0%} each)"
            decision = AutoDecision(name, kind, reason, share, wall, measured, time.monotonic())
            if ended and wall < BLOCKING_MIN_SECONDS:
                # Too little to go on: say so, but decide again next time.
                note = "; not kept: the batch ended before 50 ms were measured"
                _log_decision(replace(decision, reason=reason + note), logging.DEBUG)
            else:
                self._router.record(key, decision)
            if (back or not ended) and not batch.stopping:
                limit = self._limit
                if limit is not None:
                    # The probes still running count against it (they only run on past
                    # the decision when the limit leaves room: see `_look_early`).
                    limit = max(limit - running, 1)
                await self._delegate(kind, batch, back, limit)

    def _launch(
        self, tg: anyio.abc.TaskGroup, lane: Lane, batch: Batch, index: int, task: Any
    ) -> tuple[_Probe, anyio.Event]:
        probe = _Probe(task, index)
        done = anyio.Event()
        tg.start_soon(self._probe, lane, batch, probe, index, done)
        return probe, done

    async def _next(self, batch: Batch) -> tuple[int, Any] | None:
        """The input's next `(index, task)`, or None at its end (or if it failed)."""
        try:
            item = await batch.source.next()
        except Exception as exc:
            batch.fail(exc)
            return None
        return None if item is END else item

    async def _solo(
        self, tg: anyio.abc.TaskGroup, lane: Lane, batch: Batch, index: int, task: Any
    ) -> tuple[tuple[float, float, float], int, int, tuple[Any, int], bool] | None:
        """Stage 1: tasks one at a time until 50 ms were measured. Returns the summed
        `(cpu, wall, runnable)`, how many tasks, how many still run, the last task and
        its index, and whether the input ended; None if the batch stopped."""
        cpu = wall = runnable = 0.0
        measured = 0
        while True:
            probe, done = self._launch(tg, lane, batch, index, task)
            look = await self._look_early(probe, done)
            if look is not None:  # a long task: judged on its start, the rest goes on
                figures = (cpu + look[0], wall + look[1], runnable + look[2])
                return figures, measured + 1, 1, (task, index), False
            await done.wait()
            if batch.stopping:
                return None
            if probe.finished:
                cpu, wall, runnable = cpu + probe.cpu, wall + probe.wall, runnable + probe.runnable
                measured += 1
            if wall >= BLOCKING_MIN_SECONDS or measured >= PROBE_MAX_TASKS:
                return (cpu, wall, runnable), measured, 0, (task, index), False
            item = await self._next(batch)
            if item is None:
                if batch.stopping:
                    return None
                return (cpu, wall, runnable), measured, 0, (task, index), True
            index, task = item

    async def _pairs(
        self, tg: anyio.abc.TaskGroup, lane: Lane, batch: Batch, busy: int
    ) -> tuple[tuple[float, float, float], int, int, list[tuple[int, Any]], bool] | None:
        """Stage 2: two tasks at once, until they ran 50 ms in all (`busy`: earlier probes
        still running). Returns the summed figures, how many tasks were measured, how
        many still run, tasks pulled but not run, and whether the input ended; None if
        the batch stopped."""
        cpu = wall = runnable = 0.0
        tested = 0
        early = self._limit is None or self._limit > 2 + busy
        while wall < BLOCKING_MIN_SECONDS and tested < _PAIR_MAX_TASKS:
            items = []
            for _ in range(2):
                item = await self._next(batch)
                if item is None:
                    break
                items.append(item)
            if batch.stopping:
                return None
            if len(items) < 2:
                return (cpu, wall, runnable), tested, 0, items, True
            probes = [self._launch(tg, lane, batch, i, t) for i, t in items]
            figures, running = await self._watch_pair(probes, early)
            if batch.stopping:
                return None
            for c, w, r in figures:
                cpu, wall, runnable = cpu + c, wall + w, runnable + r
            tested += 2
            if running:
                return (cpu, wall, runnable), tested, running, [], False
        return (cpu, wall, runnable), tested, 0, [], False

    async def _watch_pair(
        self, probes: list[tuple[_Probe, anyio.Event]], early: bool
    ) -> tuple[list[tuple[float, float, float]], int]:
        """The figures of two probes running at once: once both end, or (`early`) once
        both have run 50 ms; and how many still run."""
        while True:
            with anyio.move_on_after(EARLY_LOOK if early else math.inf):
                for _, done in probes:
                    await done.wait()
            figures = []
            for probe, done in probes:
                if done.is_set():
                    if probe.finished:
                        figures.append((probe.cpu, probe.wall, probe.runnable))
                    continue
                look = probe.look()
                if look is None or look[1] < BLOCKING_MIN_SECONDS:
                    break
                figures.append(look)
            else:
                running = sum(not done.is_set() for _, done in probes)
                if len(figures) < 2 or not _overlapped(probes[0][0], probes[1][0], figures):
                    return [], running  # not at the same time: no evidence either way
                return figures, running

    async def _look_early(
        self, probe: _Probe, done: anyio.Event
    ) -> tuple[float, float, float] | None:
        """What a long probe did in its first `EARLY_LOOK` seconds (at least 50 ms of
        it), or None once it is over, or when it cannot be read, or when the call's
        `limit` is 1 (the rest could not start before it ends anyway)."""
        wait = EARLY_LOOK
        while True:
            with anyio.move_on_after(wait):
                await done.wait()
            if done.is_set() or self._limit == 1:
                return None
            look = probe.look()
            if look is None:
                if probe.started >= 0:
                    return None  # running, but its thread cannot be read here
                wait = EARLY_LOOK  # not started yet (the lane is busy): wait for it
                continue
            if look[1] < BLOCKING_MIN_SECONDS:
                wait = BLOCKING_MIN_SECONDS - look[1] + 0.005
                continue
            # Decide early only when the figures are clear: a thread waiting for a
            # core right now is not counted as runnable until it runs again.
            share = judge(*look)[1]
            if share >= BLOCKING_CPU_SHARE or share <= _CLEARLY_WAITING:
                return look
            wait = EARLY_LOOK

    def _choose(
        self, computes: bool, share: float, wall: float, measured: int, task: Any, index: int
    ) -> tuple[str, str]:
        if not computes:
            if wall < BLOCKING_MIN_SECONDS:
                return "blocking", "too short to gain from a worker process"
            return "blocking", "it waits (threads overlap the waits)"
        try:
            self._sched._lane("cpu").check_task(task, index)
        except (TypeError, RuntimeError) as exc:
            return "blocking", f"it computes, but the cpu lane cannot take it: {exc}"
        return "cpu", "it computes: worker processes run it in parallel"
