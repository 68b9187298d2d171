"""The Scheduler: the one owner of threads, processes and capacities.

One file past 500 lines on purpose: most of it is the public methods' signatures and
argument checks, which mirror `_api` one to one and read best side by side.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from ._defaults import (
    ADVICE_THRESHOLD,
    BLOCKING_LIMIT,
    IO_LIMIT,
    check_advice_options,
    cpu_capacity,
)
from ._nested import refuse_nested_blocking, refuse_nested_cpu
from ._tasks import KINDS, check_kind, check_limit, check_timeout

# What runs an event loop (anyio, the batch machinery, the controls) is imported where
# it is used: `run_all_sync(kind="cpu")` in a plain script runs without a loop and
# never loads it (see `Scheduler.run_all_sync`).
if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from ._advice import Advisor
    from ._auto import AutoRouter
    from ._batch import BatchIterator, Lane
    from ._control import Controls
    from ._limits import LimiterArg
    from ._progress import Progress, ProgressArg
    from ._retry import Retry
    from ._snapshots import LaneSnapshot

__all__ = ["CLOSE_TIMEOUT", "Scheduler", "get_scheduler"]

#: How long ``Scheduler.close()`` and interpreter exit wait, in seconds, for the lanes
#: to stop: a blocking task that never calls ``check_cancelled()`` cannot be stopped,
#: and after this its thread is abandoned (a daemon thread, gone with the process).
CLOSE_TIMEOUT = 5.0

_log = logging.getLogger("tasklanes")  # its NullHandler is added in __init__.py


def _check_capacity(name: str, value: object, optional: bool) -> None:
    """A lane capacity: an int >= 1 (``cpu_limit`` may also be None: the CPUs we may
    use). The message names the argument, unlike a call's ``limit``."""
    if value is None and optional:
        return
    hint = " or None (the CPUs this process may use)" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1{hint}, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1{hint}, got {value}")


class Scheduler:
    """Owns the lanes: their capacities, threads and worker processes.

    Every call that uses a scheduler shares its capacities, from any event loop or
    thread of the process (io capacity is counted per event loop). Most programs use
    the process-wide default ([get_scheduler][tasklanes.get_scheduler]); make your own to isolate a
    subsystem, to change capacities, or to run the cpu lane on another executor:

    ```python
    with Scheduler(blocking_limit=8, cpu_limit=2) as sched:
        sizes = sched.run_all_sync([call(os.path.getsize, p) for p in paths],
                                   kind="blocking")
    ```

    Nothing starts until a lane is first used. ``close()`` (or leaving the ``with``
    block) stops its threads and processes; a closed scheduler refuses new work.

    ``cpu_executor`` takes any ``concurrent.futures.Executor``, in particular
    ``distributed.Client(...).get_executor(pure=False)`` to run the cpu lane on a
    Dask cluster (``pure=False``: by default Dask runs identical calls only once and
    shares the result, which is wrong for tasks with side effects or randomness).
    With a foreign executor, ``cpu_limit`` bounds the tasks in flight; by default it
    is the executor's worker count (for Dask: twice the cluster's worker threads).
    ``mp_context`` picks the start method of the default process pool (``"fork"``,
    ``"forkserver"``, ``"spawn"`` or a context). The default is decided when the pool
    starts: on Linux, in a process that runs a single thread, a *zygote* (a copy of
    the process, forked then, forks every worker: no new interpreter, nothing
    imported again); otherwise forkserver on Linux, spawn elsewhere (see
    docs/start-methods.md).

    ``cpu_max_tasks_per_worker`` and ``cpu_max_worker_memory`` (bytes of resident
    memory) recycle the default pool's worker processes: a worker that has run that
    many tasks, or whose memory exceeds the limit after a chunk of tasks, is replaced
    once its current work is over. No task is lost or run twice;
    ``stats()["cpu"].recycled`` counts replacements.
    ``cpu_worker_nice`` (0 to 19, default 0) lowers the default pool's worker
    processes' scheduling priority by that much (Unix ``nice``): a server that
    offloads CPU work to them keeps its own event loop answering quickly when the
    workers fill every core (docs/scheduler.md). Work of other programs on the
    machine then also comes before the workers'.
    ``advice`` (default on) warns, with a [KindWarning][tasklanes.KindWarning], when
    work seems to be on the wrong lane: an io task that holds the event loop longer
    than ``advice_threshold`` seconds, a blocking task that mostly computes (see
    "Monitoring and advice" in the docs).
    """

    def __init__(
        self,
        io_limit: int = IO_LIMIT,
        blocking_limit: int = BLOCKING_LIMIT,
        cpu_limit: int | None = None,
        cpu_executor: Executor | None = None,
        mp_context: BaseContext | str | None = None,
        cpu_max_tasks_per_worker: int | None = None,
        cpu_max_worker_memory: int | None = None,
        cpu_worker_nice: int = 0,
        advice: bool = True,
        advice_threshold: float = ADVICE_THRESHOLD,
    ) -> None:
        for name, value, optional in (
            ("io_limit", io_limit, False),
            ("blocking_limit", blocking_limit, False),
            ("cpu_limit", cpu_limit, True),
        ):
            _check_capacity(name, value, optional)
        if cpu_executor is not None and not isinstance(cpu_executor, Executor):
            raise TypeError(
                "cpu_executor must be a concurrent.futures.Executor (for Dask: "
                f"client.get_executor()), got {type(cpu_executor).__name__}"
            )
        for name, limit in (
            ("cpu_max_tasks_per_worker", cpu_max_tasks_per_worker),
            ("cpu_max_worker_memory", cpu_max_worker_memory),
        ):
            if limit is None:
                continue
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(
                    f"{name} must be an int >= 1 or None (no limit), got {type(limit).__name__}"
                )
            if limit < 1:
                raise ValueError(f"{name} must be >= 1 or None (no limit), got {limit}")
            if cpu_executor is not None:
                raise ValueError(
                    f"{name} recycles tasklanes' own worker processes; it does not apply "
                    "with cpu_executor (configure recycling on that executor instead)"
                )
        if isinstance(cpu_worker_nice, bool) or not isinstance(cpu_worker_nice, int):
            raise TypeError(
                f"cpu_worker_nice must be an int from 0 to 19, got {type(cpu_worker_nice).__name__}"
            )
        if not 0 <= cpu_worker_nice <= 19:
            raise ValueError(
                "cpu_worker_nice must be from 0 (the parent's priority) to 19 (the lowest), "
                f"got {cpu_worker_nice}"
            )
        if cpu_worker_nice and cpu_executor is not None:
            raise ValueError(
                "cpu_worker_nice sets the priority of tasklanes' own worker processes; it "
                "does not apply with cpu_executor"
            )
        if isinstance(mp_context, str):
            import multiprocessing

            mp_context = multiprocessing.get_context(mp_context)  # ValueError if unknown
        elif mp_context is not None and not callable(getattr(mp_context, "Process", None)):
            raise TypeError(
                "mp_context must be a multiprocessing context, a start method name "
                f"('forkserver', 'spawn', 'fork') or None, got {type(mp_context).__name__}"
            )
        threshold = check_advice_options(advice, advice_threshold)  # kind advice
        # Made with the first lane that gives advice (io, blocking): a script that only
        # uses the cpu lane never imports `_advice`.
        self._advice_threshold = threshold if advice else None
        self._advisor: Advisor | None = None
        self._io_limit = io_limit
        self._blocking_limit = blocking_limit
        self._cpu_limit = cpu_limit
        self._cpu_capacity: int | None = None  # cpu_limit, or its default once resolved
        self._cpu_executor = cpu_executor
        self._mp_context = mp_context
        self._cpu_recycling = (cpu_max_tasks_per_worker, cpu_max_worker_memory)
        self._cpu_worker_nice = cpu_worker_nice
        self._lanes: dict[str, Lane] = {}
        self._auto: AutoRouter | None = None  # kind="auto": its decisions, on first use
        self._lock = threading.Lock()
        self._closed = False
        # Collected without close(): stop the lanes as the standard library's executors
        # do (without waiting: the collector may run on any thread, even a loop's).
        # The finalizer holds the lanes, never the scheduler.
        self._finalizer = weakref.finalize(self, _stop_lanes, self._lanes, 0.0)
        self._finalizer.atexit = False  # exit is _close_all_at_exit's job

    # -- lanes -----------------------------------------------------------------

    def _lane(self, kind: str) -> Lane:
        lane = self._lanes.get(kind)
        if lane is not None:
            return lane
        with self._lock:
            if self._closed:
                raise RuntimeError("this Scheduler is closed; create a new one")
            lane = self._lanes.get(kind)
            if lane is None:
                lane = self._make_lane(kind)
                self._lanes[kind] = lane
                _track(self)
            return lane

    def _make_lane(self, kind: str) -> Lane:
        lane = self._make_lane_of(kind)
        if kind in ("io", "blocking"):  # the lanes that give kind advice
            if self._advisor is None and self._advice_threshold is not None:
                from ._advice import Advisor

                self._advisor = Advisor(self._advice_threshold)
            lane.advisor = self._advisor  # type: ignore[attr-defined]
        return lane

    def _make_lane_of(self, kind: str) -> Lane:
        if kind == "io":
            from ._lanes._io import IoLane

            return IoLane(self._io_limit)
        if kind == "blocking":
            from ._lanes._threads import ThreadLane

            return ThreadLane(self._blocking_limit)
        if self._cpu_executor is not None:
            from ._lanes._executor import ExecutorLane

            return ExecutorLane(self._cpu_executor, self.capacity_or_default())
        refuse_nested_cpu()  # a worker process cannot start a pool: say so at once
        from ._defaults import mp_context
        from ._lanes._cpu import ProcessLane

        max_tasks, max_memory = self._cpu_recycling
        return ProcessLane(
            self.capacity_or_default(),
            mp_context(self._mp_context),
            max_tasks_per_worker=max_tasks,
            max_worker_memory=max_memory,
            worker_nice=self._cpu_worker_nice,
        )

    def _resolve(
        self, kind: object, limit: object, timeout: object
    ) -> tuple[Lane, int, float | None]:
        kind = check_kind(kind)
        call_limit = check_limit(limit)
        seconds = check_timeout(timeout)
        if kind == "auto":  # auto: a lane per batch, chosen by _auto
            auto = self._auto_lane(call_limit)
            return auto, auto.capacity, seconds
        lane = self._lane(kind)
        if kind == "blocking":
            refuse_nested_blocking(lane)  # would wait for ever once every thread does it
        return lane, lane.capacity if call_limit is None else call_limit, seconds

    def _auto_lane(self, limit: int | None) -> Lane:
        from ._auto import AutoLane, AutoRouter

        with self._lock:
            if self._closed:
                raise RuntimeError("this Scheduler is closed; create a new one")
            if self._auto is None:
                self._auto = AutoRouter()
        return AutoLane(self, self._auto, limit)

    def capacity(self, kind: str) -> int:
        """How many tasks of ``kind`` run at once (io: per event loop)."""
        if check_kind(kind) == "auto":
            raise ValueError("kind='auto' has no capacity of its own: it runs on the lane it picks")
        if kind == "io":
            return self._io_limit
        if kind == "blocking":
            return self._blocking_limit
        return self.capacity_or_default()

    # -- the batch API -----------------------------------------------------------

    async def run_all(
        self,
        tasks: Iterable[Any] | AsyncIterable[Any],
        kind: str = "io",
        limit: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
        progress: ProgressArg = False,
        limiter: LimiterArg = None,
        rate: float | None = None,
        retry: int | Retry | None = None,
    ) -> list[Any]:
        """``run_all`` on this scheduler; see [run_all][tasklanes.run_all]."""
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        from ._batch import collect

        controls = _controls(limiter, rate, retry)
        return await collect(
            lane,
            tasks,
            call_limit,
            seconds,
            bool(return_exceptions),
            _progress(progress),
            controls,
        )

    def as_completed(
        self,
        tasks: Iterable[Any] | AsyncIterable[Any],
        kind: str = "io",
        limit: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
        progress: ProgressArg = False,
        limiter: LimiterArg = None,
        rate: float | None = None,
        retry: int | Retry | None = None,
    ) -> BatchIterator[Any]:
        """``as_completed`` on this scheduler; see [as_completed][tasklanes.as_completed]."""
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        from ._batch import BatchIterator

        controls = _controls(limiter, rate, retry)
        return BatchIterator(
            lane,
            tasks,
            call_limit,
            seconds,
            bool(return_exceptions),
            ordered=False,
            with_index=True,
            progress=_progress(progress),
            controls=controls,
        )

    def amap(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any] | AsyncIterable[Any],
        kind: str = "io",
        limit: int | None = None,
        timeout: float | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: ProgressArg = False,
        limiter: LimiterArg = None,
        rate: float | None = None,
        retry: int | Retry | None = None,
    ) -> BatchIterator[Any]:
        """``amap`` on this scheduler; see [amap][tasklanes.amap]."""
        if not callable(fn):
            raise TypeError(f"amap() needs a callable first, got {type(fn).__name__}")
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        from ._batch import BatchIterator

        # A limiter= callable gets the item: the task is Call(fn, (item,), {}).
        controls = _controls(limiter, rate, retry, per_item=_item_of)
        lane.check_task(_probe_task(fn), 0)  # a wrong fn fails now, not per item
        # The cpu lane on its own pool takes the items as they are, with `fn` beside
        # them: no `Call` built per item here, none unpacked when a chunk is pickled.
        maps_items = controls is None and getattr(lane, "maps_items", False)
        return BatchIterator(
            lane,
            _items(items) if maps_items else _map_tasks(fn, items),
            call_limit,
            seconds,
            bool(return_exceptions),
            ordered=bool(ordered),
            with_index=False,
            progress=_progress(progress),
            controls=controls,
            map_fn=fn if maps_items else None,
        )

    def run_all_sync(
        self,
        tasks: Iterable[Any],
        kind: str = "io",
        limit: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
        progress: ProgressArg = False,
        limiter: LimiterArg = None,
        rate: float | None = None,
        retry: int | Retry | None = None,
    ) -> list[Any]:
        """``run_all_sync`` on this scheduler; see [run_all_sync][tasklanes.run_all_sync]."""
        if (
            kind == "cpu"
            and self._cpu_executor is None
            and isinstance(tasks, (list, tuple))
            and limiter is None
            and rate is None
            and retry is None
            and (progress is False or progress is None)
            and not _loop_running()
        ):
            # The common script case, without an event loop: the lane waits for the
            # pool in this thread (`ProcessLane.run_blocking`). Nothing of anyio or
            # asyncio is imported or started; the outcomes, errors, timeouts and
            # Ctrl-C are those of the loop path.
            from ._batch import collect_blocking

            lane, call_limit, seconds = self._resolve(kind, limit, timeout)
            return collect_blocking(lane, tasks, call_limit, seconds, bool(return_exceptions))
        from ._backend import run_sync

        _controls(limiter, rate, retry)  # bad arguments fail before a loop starts
        if kind == "cpu" and self._cpu_executor is None and "cpu" not in self._lanes:
            self._start_forkserver_early()
        return run_sync(
            functools.partial(self.run_all, limiter=limiter, rate=rate, retry=retry),
            tasks,
            kind,
            limit,
            timeout,
            return_exceptions,
            progress,
        )

    def _start_forkserver_early(self) -> None:
        """Start the forkserver now, if the pool will use one: its interpreter start and
        preloads then overlap what this process still imports before the pool starts
        (the event loop, the lanes, the pool: the most of a one-shot script's first
        call). Starting it is all this does (`ensure_running` returns before the server
        has imported anything); the pool connects to it as it would have anyway."""
        import multiprocessing

        process = multiprocessing.current_process()
        if process.name == "tasklanes-worker" or process.daemon:
            return  # refused with a clear error where the lane is made
        from ._defaults import mp_context

        context = mp_context(self._mp_context)
        if context is None:
            from ._processes._zygote import can_fork_zygote

            if can_fork_zygote():
                return  # the pool will fork a zygote: no forkserver
            from ._processes._context import default_context

            context = default_context()
        if context.get_start_method() != "forkserver":
            return
        from multiprocessing import forkserver

        try:
            forkserver.ensure_running()
        except Exception:  # pragma: no cover - the pool's own start reports it
            _log.debug("could not start the forkserver early", exc_info=True)

    # -- figures and lifecycle -----------------------------------------------------

    def stats(self) -> dict[str, LaneSnapshot]:
        """The figures of every lane, as ``{"io": ..., "blocking": ..., "cpu": ...}``.

        Each [LaneSnapshot][tasklanes.LaneSnapshot] reads as attributes or keys: ``capacity``,
        ``running``, ``waiting``, ``completed``, ``failed``, ``timed_out``,
        ``cancelled``, ``crashed``, ``killed``, and ``wait`` (queue lag) and ``run``
        (run time) as ``count``/``mean``/``max`` in seconds. A lane not used yet
        shows zeros. ``auto`` lists the functions ``kind="auto"`` sent to that lane.
        """
        from ._stats import LaneStats

        out: dict[str, LaneSnapshot] = {}
        for kind in KINDS:
            lane = self._lanes.get(kind)
            if lane is not None:
                out[kind] = lane.stats.snapshot()
            else:
                out[kind] = LaneStats(kind, self.capacity(kind)).snapshot()
        if self._auto is not None:  # kind="auto": each lane lists what auto sent it
            out = self._auto.annotate(out)
        return out

    def _histograms(self) -> dict[str, dict[str, tuple[list[int], int, float]]]:
        """The lanes' `wait` and `run` histograms, for exporters (`tasklanes.metrics`):
        `{lane: {"wait": (bucket counts, count, total seconds), "run": ...}}`."""
        from ._stats import LaneStats

        out = {}
        for kind in KINDS:
            lane = self._lanes.get(kind)
            stats = lane.stats if lane is not None else LaneStats(kind, 0)
            out[kind] = stats.histograms()
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Stop the lanes' threads and worker processes and wait for them. Idempotent.

        Call it when no batch runs: a batch still running when its lane closes gets
        errors, not results. Running blocking tasks are asked to stop
        ([check_cancelled][tasklanes.check_cancelled] raises in them); a thread cannot
        be killed, so ``close()`` waits at most ``timeout`` seconds (default
        `CLOSE_TIMEOUT`, 5 s; ``None``: as long as it takes). A thread still running
        a task then is abandoned: it is a daemon thread, it ends with its task or with
        the process, and a WARNING record on the ``"tasklanes"`` logger names it.
        Interpreter exit closes every open scheduler the same way.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        with self._lock:
            self._closed = True
            lanes = dict(self._lanes)
            self._lanes.clear()
            self._finalizer.detach()
        _stop_lanes(lanes, timeout)
        if self._advisor is not None:  # stop the advice watchdog thread
            self._advisor.close()

    async def aclose(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """``close()`` without blocking the event loop: it runs on a helper thread."""
        from ._backend import run_in_fresh_thread

        await run_in_fresh_thread(lambda: self.close(timeout))

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Scheduler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Scheduler {state} io_limit={self._io_limit} "
            f"blocking_limit={self._blocking_limit} cpu_limit={self.capacity_or_default()}>"
        )

    def capacity_or_default(self) -> int:
        """The cpu lane's capacity: ``cpu_limit``, or its default, worked out once (for
        a Dask executor that asks the cluster, so not on every ``stats()``)."""
        if self._cpu_capacity is None:
            self._cpu_capacity = cpu_capacity(self._cpu_limit, self._cpu_executor)
        return self._cpu_capacity


def _controls(
    limiter: object, rate: object, retry: object, per_item: Callable[[Any], Any] | None = None
) -> Controls | None:
    """`limiter=`, `rate=`, `retry=` checked (`make_controls`), or None when none is given.
    The controls' module (and its imports) is loaded only by a call that uses them."""
    if limiter is None and rate is None and retry is None:
        return None
    from ._control import make_controls

    return make_controls(limiter, rate, retry, per_item)


def _progress(arg: object) -> Progress | None:
    """`progress=` checked (`make_progress`), or None for none; loaded only when used."""
    if arg is None or arg is False:
        return None
    from ._progress import make_progress

    return make_progress(arg)  # type: ignore[arg-type]


def _item_of(task: Any) -> Any:
    return task.args[0]


def _probe_task(fn: Callable[[Any], Any]) -> object:
    from ._call import Call

    return Call(fn, (None,), {})


def _items(items: Iterable[Any] | AsyncIterable[Any]) -> Iterable[Any] | AsyncIterable[Any]:
    """`amap`'s items as a lazy input, as `_map_tasks` makes them (a list too is read
    as the results are consumed, not checked or handed over whole)."""
    if isinstance(items, AsyncIterable):
        return items
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"amap() needs an iterable or async iterable of items, got {type(items).__name__}"
        )
    return iter(items)


def _map_tasks(
    fn: Callable[[Any], Any], items: Iterable[Any] | AsyncIterable[Any]
) -> Iterable[Any] | AsyncIterable[Any]:
    from ._call import Call, call_each

    if isinstance(items, AsyncIterable):

        async def agen() -> AsyncIterator[Call[Any]]:
            async for item in items:
                yield Call(fn, (item,), {})

        return agen()
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"amap() needs an iterable or async iterable of items, got {type(items).__name__}"
        )
    return call_each(fn, items)


def _loop_running() -> bool:
    """Whether an event loop runs in this thread, without importing one to ask:
    none can run unless asyncio or trio is loaded (``_backend.in_event_loop``, which
    the loop path checks again, says which)."""
    if "asyncio" not in sys.modules and "trio" not in sys.modules:
        return False
    from ._backend import in_event_loop

    return in_event_loop()


_default: Scheduler | None = None
_default_lock = threading.Lock()


def get_scheduler() -> Scheduler:
    """The process-wide default Scheduler, created on first use (and again after it
    was closed)."""
    global _default
    sched = _default
    if sched is None or sched.closed:
        with _default_lock:
            if _default is None or _default.closed:
                _default = Scheduler()
            sched = _default
    return sched


def check_scheduler(scheduler: object) -> Scheduler | None:
    """``scheduler=`` as the API takes it: a `Scheduler`, or None (the default)."""
    if scheduler is not None and not isinstance(scheduler, Scheduler):
        raise TypeError(
            "scheduler must be a Scheduler or None (the default one), "
            f"got {type(scheduler).__name__}"
        )
    return scheduler


def scheduler_or_default(scheduler: object) -> Scheduler:
    """The scheduler a call runs on: the one given, or the process-wide default."""
    given = check_scheduler(scheduler)
    return given if given is not None else get_scheduler()


# -- lifecycle: closing lanes with a bound, and at exit ----------------------------

_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()  # schedulers with a lane started
_exit_hook_registered = False


def _track(sched: Scheduler) -> None:
    """Remember ``sched`` for interpreter exit (called under its lock, first lane).

    One process-wide exit hook over a weak set: a per-scheduler ``atexit`` entry would
    never be removed. Registered on first use, not at import, so that it runs before
    the ``multiprocessing`` exit hook (atexit runs the latest first).
    """
    global _exit_hook_registered
    _live.add(sched)
    if not _exit_hook_registered:
        with _default_lock:
            if not _exit_hook_registered:
                atexit.register(_close_all_at_exit)
                _exit_hook_registered = True


def _close_all_at_exit() -> None:
    lanes: dict[str, Lane] = {}
    for number, sched in enumerate(list(_live)):
        with sched._lock:
            sched._closed = True
            for kind, lane in sched._lanes.items():
                lanes[f"{kind}#{number}"] = lane
            sched._lanes.clear()
            sched._finalizer.detach()
    if lanes:
        _stop_lanes(lanes, CLOSE_TIMEOUT)  # all of them at once, under one bound


def _stop_lanes(lanes: dict[str, Lane], timeout: float | None) -> None:
    """Close every lane at once, each on a daemon thread; wait at most ``timeout``.

    A lane's ``close()`` joins its threads, and a thread running a task that ignores
    ``check_cancelled()`` returns only when that task does: waiting on a daemon
    closer bounds how long the caller waits, and a lane that is slow to stop does
    not delay the others (the cpu lane's workers go at once). A closer still running
    after ``timeout`` is left to finish when its threads do.
    """
    closers: dict[str, threading.Thread] = {}
    inline: dict[str, Lane] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    for name, lane in list(lanes.items()):
        # A task closing its own scheduler: its lane stops once the task returns, so
        # waiting for that here would be waiting for ourselves. (Asked before the
        # lane closes: a closed lane owns no thread.)
        owns = getattr(lane, "owns_current_thread", None)
        ours = owns is not None and owns()
        closer = threading.Thread(
            target=_close_lane, args=(lane,), name=f"tasklanes-close-{name}", daemon=True
        )
        try:
            closer.start()
        except RuntimeError:
            # Python 3.12+ starts no thread at interpreter shutdown (our atexit hook):
            # close it here, its joins bounded by the same deadline.
            inline[name] = lane
            continue
        if not ours:
            closers[name] = closer
    lanes.clear()
    for lane in inline.values():
        if hasattr(lane, "close_deadline"):
            lane.close_deadline = deadline if timeout != 0.0 else time.monotonic()
        _close_lane(lane)
    if timeout == 0.0:
        return  # collected without close(): stop, but do not wait
    for closer in closers.values():
        closer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    stuck = [name for name, closer in closers.items() if closer.is_alive()]
    stuck += [name for name, lane in inline.items() if _threads_alive(lane)]
    if stuck:
        _log.warning(
            "Scheduler.close(): lanes %s still running tasks after %s s were abandoned "
            "(threads %s keep running as daemon threads until their tasks return; "
            "blocking tasks stop early by calling check_cancelled())",
            ", ".join(stuck),
            timeout,
            ", ".join(_busy_threads()) or "none",
        )


def _threads_alive(lane: Lane) -> bool:
    """A lane closed inline still has threads running tasks (see `_stop_lanes`)."""
    pool = getattr(lane, "closed_pool", None)
    return pool is not None and any(t.is_alive() for t in list(pool._threads))


def _close_lane(lane: Lane) -> None:
    try:
        lane.close()
    except Exception:  # a closer thread must not die silently
        _log.exception("closing the %s lane failed", lane.kind)


def _busy_threads() -> list[str]:
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("tasklanes-") and not t.name.startswith("tasklanes-close")
    )
