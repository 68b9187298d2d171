"""The Scheduler: the one owner of threads, processes and capacities."""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from concurrent.futures import Executor
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from ._batch import BatchIterator, Lane, collect
from ._control import make_controls
from ._limits import LimiterArg
from ._retry import Retry
from ._stats import LaneSnapshot
from ._tasks import KINDS, check_kind, check_limit, check_timeout

if TYPE_CHECKING:
    from ._progress import ProgressArg

__all__ = ["Scheduler", "get_scheduler"]


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
    the process-wide default (:func:`get_scheduler`); make your own to isolate a
    subsystem, to change capacities, or to run the cpu lane on another executor::

        with Scheduler(blocking_limit=8, cpu_limit=2) as sched:
            sizes = sched.run_all_sync([call(os.path.getsize, p) for p in paths],
                                       kind="blocking")

    Nothing starts until a lane is first used. ``close()`` (or leaving the ``with``
    block) stops its threads and processes; a closed scheduler refuses new work.

    ``cpu_executor`` takes any ``concurrent.futures.Executor``, in particular
    ``distributed.Client(...).get_executor(pure=False)`` to run the cpu lane on a
    Dask cluster (``pure=False``: by default Dask runs identical calls only once and
    shares the result, which is wrong for tasks with side effects or randomness).
    With a foreign executor, ``cpu_limit`` bounds the tasks in flight; by default it
    is the executor's worker count (for Dask: twice the cluster's worker threads).
    ``mp_context`` picks the start method of the default process pool (default:
    forkserver on Linux, spawn elsewhere).
    """

    def __init__(
        self,
        io_limit: int = 1000,
        blocking_limit: int = 40,
        cpu_limit: int | None = None,
        cpu_executor: Executor | None = None,
        mp_context: BaseContext | str | None = None,
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
        if isinstance(mp_context, str):
            import multiprocessing

            mp_context = multiprocessing.get_context(mp_context)  # ValueError if unknown
        elif mp_context is not None and not callable(getattr(mp_context, "Process", None)):
            raise TypeError(
                "mp_context must be a multiprocessing context, a start method name "
                f"('forkserver', 'spawn', 'fork') or None, got {type(mp_context).__name__}"
            )
        self._io_limit = io_limit
        self._blocking_limit = blocking_limit
        self._cpu_limit = cpu_limit
        self._cpu_capacity: int | None = None  # cpu_limit, or its default once resolved
        self._cpu_executor = cpu_executor
        self._mp_context = mp_context
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._atexit_registered = False

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
                if not self._atexit_registered:
                    # A weak reference: registering must not keep a dropped scheduler alive.
                    atexit.register(_close_at_exit, weakref.ref(self))
                    self._atexit_registered = True
            return lane

    def _make_lane(self, kind: str) -> Lane:
        if kind == "io":
            from ._lanes._io import IoLane

            return IoLane(self._io_limit)
        if kind == "blocking":
            from ._lanes._threads import ThreadLane

            return ThreadLane(self._blocking_limit)
        from ._lanes._executor import ExecutorLane

        if self._cpu_executor is not None:
            return ExecutorLane(self._cpu_executor, self.capacity_or_default())
        from ._lanes._cpu import ProcessLane

        return ProcessLane(self.capacity_or_default(), self._mp_context)

    def _resolve(
        self, kind: object, limit: object, timeout: object
    ) -> tuple[Lane, int, float | None]:
        kind = check_kind(kind)
        call_limit = check_limit(limit)
        seconds = check_timeout(timeout)
        lane = self._lane(kind)
        return lane, lane.capacity if call_limit is None else call_limit, seconds

    def capacity(self, kind: str) -> int:
        """How many tasks of ``kind`` run at once (io: per event loop)."""
        check_kind(kind)
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
        """``run_all`` on this scheduler; see :func:`tasklanes.run_all`."""
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        controls = make_controls(limiter, rate, retry)
        from ._progress import make_progress

        return await collect(
            lane,
            tasks,
            call_limit,
            seconds,
            bool(return_exceptions),
            make_progress(progress),
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
        """``as_completed`` on this scheduler; see :func:`tasklanes.as_completed`."""
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        controls = make_controls(limiter, rate, retry)
        from ._progress import make_progress

        return BatchIterator(
            lane,
            tasks,
            call_limit,
            seconds,
            bool(return_exceptions),
            ordered=False,
            with_index=True,
            progress=make_progress(progress),
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
        """``amap`` on this scheduler; see :func:`tasklanes.amap`."""
        if not callable(fn):
            raise TypeError(f"amap() needs a callable first, got {type(fn).__name__}")
        lane, call_limit, seconds = self._resolve(kind, limit, timeout)
        # A limiter= callable gets the item: the task is Call(fn, (item,), {}).
        controls = make_controls(limiter, rate, retry, per_item=_item_of)
        lane.check_task(_probe_task(fn), 0)  # a wrong fn fails now, not per item
        from ._progress import make_progress

        return BatchIterator(
            lane,
            _map_tasks(fn, items),
            call_limit,
            seconds,
            bool(return_exceptions),
            ordered=bool(ordered),
            with_index=False,
            progress=make_progress(progress),
            controls=controls,
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
        """``run_all_sync`` on this scheduler; see :func:`tasklanes.run_all_sync`."""
        from ._api import run_sync

        make_controls(limiter, rate, retry)  # bad arguments fail before a loop starts
        return run_sync(
            functools.partial(self.run_all, limiter=limiter, rate=rate, retry=retry),
            tasks,
            kind,
            limit,
            timeout,
            return_exceptions,
            progress,
        )

    # -- figures and lifecycle -----------------------------------------------------

    def stats(self) -> dict[str, LaneSnapshot]:
        """The figures of every lane, as ``{"io": ..., "blocking": ..., "cpu": ...}``.

        Each :class:`LaneSnapshot` reads as attributes or keys: ``capacity``,
        ``running``, ``waiting``, ``completed``, ``failed``, ``timed_out``,
        ``cancelled``, ``crashed``, ``killed``, and ``wait`` (queue lag) and ``run``
        (run time) as ``count``/``mean``/``max`` in seconds. A lane not used yet
        shows zeros.
        """
        from ._stats import LaneStats

        out: dict[str, LaneSnapshot] = {}
        for kind in KINDS:
            lane = self._lanes.get(kind)
            if lane is not None:
                out[kind] = lane.stats.snapshot()
            else:
                out[kind] = LaneStats(kind, self.capacity(kind)).snapshot()
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the lanes' threads and worker processes and wait for them. Idempotent.

        Call it when no batch runs: a batch still running when its lane closes gets
        errors, not results.
        """
        with self._lock:
            self._closed = True
            lanes = list(self._lanes.values())
            self._lanes.clear()
        for lane in lanes:
            lane.close()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop: it runs on a helper thread."""
        from ._api import run_in_fresh_thread

        await run_in_fresh_thread(self.close)

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
            self._cpu_capacity = self._cpu_limit or _cpu_default(self._cpu_executor)
        return self._cpu_capacity


def _cpu_default(executor: Executor | None) -> int:
    from ._lanes._executor import default_cpu_count, executor_capacity

    if executor is not None:
        return executor_capacity(executor)
    return default_cpu_count()


def _item_of(task: Any) -> Any:
    return task.args[0]


def _probe_task(fn: Callable[[Any], Any]) -> object:
    from ._call import Call

    return Call(fn, (None,), {})


def _map_tasks(
    fn: Callable[[Any], Any], items: Iterable[Any] | AsyncIterable[Any]
) -> Iterable[Any] | AsyncIterable[Any]:
    from ._call import Call

    if isinstance(items, AsyncIterable):

        async def agen() -> AsyncIterator[Call[Any]]:
            async for item in items:
                yield Call(fn, (item,), {})

        return agen()
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(
            f"amap() needs an iterable or async iterable of items, got {type(items).__name__}"
        )
    return (Call(fn, (item,), {}) for item in items)


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
    """``scheduler=`` as the API takes it: a :class:`Scheduler`, or None (the default)."""
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


def _close_at_exit(ref: weakref.ref[Scheduler]) -> None:
    sched = ref()
    if sched is not None:
        sched.close()
