"""``@offload``: a function turned into an awaitable one that runs on a lane."""

from __future__ import annotations

import enum
import functools
import threading
import types
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import anyio

from ._backend import LoopHandle
from ._batch import annotate
from ._call import Call
from ._control import make_controls
from ._errors import TaskTimeout, WorkerCrashed
from ._limits import Limiter, LimiterArg, with_rate
from ._processes._pickling import importable_by_name
from ._retry import Retry
from ._scheduler import Scheduler, check_scheduler, scheduler_or_default
from ._tasks import END, Source, check_kind, check_limit, check_timeout

__all__ = ["Offloaded", "offload"]

P = ParamSpec("P")
R = TypeVar("R")
W = TypeVar("W")  # what the original returns: R for sync functions, Awaitable[R] for io


class _ProcessLimiter:
    """A counting semaphore that works across event loops and threads.

    ``@offload(limit=N)`` bounds a function's concurrent calls across the whole
    process, whatever loop they come from; anyio's limiters belong to one loop.
    A waiter is woken on its own loop through ``call_soon_threadsafe``.
    """

    def __init__(self, total: int) -> None:
        self._lock = threading.Lock()
        self._free = total
        self._waiters: deque[list[Any]] = deque()

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter: list[Any] = [False, anyio.Event(), LoopHandle().call_soon_threadsafe]
            self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        except BaseException:
            with self._lock:
                granted = waiter[0]
                if not granted:
                    self._waiters.remove(waiter)
            if granted:
                self.release()  # handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter[0] = True
                waiter[2](waiter[1].set)
                return
            self._free += 1


def _invoke(fn: Offloaded[..., Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the original of a decorated function (in a worker process, typically)."""
    return fn.__wrapped__(*args, **kwargs)


class Offloaded(Generic[P, R, W]):
    """A function decorated with [offload][tasklanes.offload]. Awaiting a call runs it on its lane.

    ``Offloaded[P, R, W]``: called with the original's parameters ``P``, awaiting the
    call gives ``R``; ``__wrapped__`` is the original, returning ``W``.
    """

    __wrapped__: Callable[P, W]

    def __init__(
        self,
        fn: Callable[P, W],
        kind: str,
        limit: int | None,
        timeout: float | None,
        scheduler: Scheduler | None,
        limiter: LimiterArg = None,
        rate: float | None = None,
        retry: int | Retry | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.__tasklanes_wrapped__ = fn
        self.__qualname__: str = getattr(fn, "__qualname__", repr(fn))
        self.kind = kind
        self.limit = limit
        self.timeout = timeout
        self._scheduler = scheduler
        self._process_limiter = None if limit is None else _ProcessLimiter(limit)
        # io: one budget per event loop, keyed weakly so that it goes with its loop
        # (an asyncio loop, or a trio run's token): every asyncio.run would leak one.
        self._loop_limiters: weakref.WeakKeyDictionary[object, _ProcessLimiter] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # rate= of the decorator is one budget for every call of the function.
        self._limiter_arg = with_rate(limiter, None if rate is None else Limiter(rate=rate))
        self._retry = retry

    def _limiter(self) -> _ProcessLimiter | None:
        if self.limit is None:
            return None
        if self.kind != "io":
            return self._process_limiter
        key = LoopHandle().key
        with self._lock:
            limiter = self._loop_limiters.get(key)
            if limiter is None:
                limiter = self._loop_limiters[key] = _ProcessLimiter(self.limit)
            return limiter

    def _task(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.kind == "auto":  # measured as the original, sent as in the cpu lane
            return _AutoCall(self, args, kwargs)
        if self.kind == "cpu":
            # Sent by reference: the module attribute is this object, whose
            # __reduce__ names it, and the worker calls the original.
            return Call(_invoke, (self, args, kwargs), {})
        return Call(self.__wrapped__, args, kwargs)

    def __reduce__(self) -> str | tuple[Any, ...]:
        name: str = self.__qualname__  # set by functools.update_wrapper
        if not importable_by_name(self.__module__, name):
            # Decorated in a notebook, the REPL or a function: no name that a worker
            # can import. The original travels by value instead (_processes/_pickling).
            return (types.SimpleNamespace, (), {"__wrapped__": self.__wrapped__})
        return name

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        sched = scheduler_or_default(self._scheduler)
        limiter = self._limiter()
        if limiter is not None:
            await limiter.acquire()
        try:
            results = await sched.run_all(
                [self._task(args, kwargs)],
                self.kind,
                1,
                self.timeout,
                limiter=self._limiter_arg,
                retry=self._retry,
            )
        except BaseException as exc:
            _drop_batch_note(exc)
            raise
        finally:
            if limiter is not None:
                limiter.release()
        result: R = results[0]
        return result

    async def map(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        limit: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[R]:
        """Call the function on each item, as one [run_all][tasklanes.run_all] batch.

        ``many = await render.map(frames, limit=4)``. The decorator's ``limit`` still
        bounds the function's calls across the process: each task of the batch takes
        one of the function's permits when it starts and gives it back when it ends,
        exactly like a single call, so maps and single calls share the permits and
        none of them ever waits for a permit held by a task that is not running.
        Waiting for a permit takes no thread, worker or lane slot.

        Cancellation: as for [run_all][tasklanes.run_all]; permits taken for tasks
        that never started are given back before this returns or raises.
        """
        sched = scheduler_or_default(self._scheduler)
        check_limit(limit)
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        limiter = self._limiter()
        if limiter is not None and self.kind not in ("cpu", "auto"):
            if not isinstance(items, (AsyncIterable, Iterable)):
                raise TypeError(
                    f"map() needs an iterable or async iterable, got {type(items).__name__}"
                )
            return await self._map_permitted(
                sched, limiter, items, limit, seconds, return_exceptions
            )
        if isinstance(items, AsyncIterable):

            async def agen() -> Any:
                async for item in items:
                    yield self._task((item,), {})

            tasks: Any = agen()
        else:
            tasks = [self._task((item,), {}) for item in items]
        if limiter is None:
            try:
                return await sched.run_all(
                    tasks,
                    self.kind,
                    limit,
                    seconds,
                    return_exceptions,
                    limiter=self._limiter_arg,
                    retry=self._retry,
                )
            finally:
                if not isinstance(tasks, list):  # our generator: close it, finished or not
                    with anyio.CancelScope(shield=True):
                        await tasks.aclose()
        # cpu (or auto, which may choose cpu) with a limit: a worker process cannot
        # give a permit back, so workers here take one per task around a batch of one.
        return await self._map_with_permits(
            sched, limiter, tasks, self._width(limit), seconds, return_exceptions
        )

    def _width(self, limit: int | None) -> int:
        """How many tasks of a ``map`` run at once: its own ``limit`` within the
        decorator's."""
        assert self.limit is not None
        return self.limit if limit is None else min(limit, self.limit)

    async def _map_permitted(
        self,
        sched: Scheduler,
        limiter: _ProcessLimiter,
        items: Iterable[Any] | AsyncIterable[Any],
        limit: int | None,
        seconds: float | None,
        return_exceptions: bool,
    ) -> list[Any]:
        """``map`` of an io or blocking function with a ``limit``: one batch whose tasks
        each take a permit before they are handed to the lane and give it back when
        they end, like single calls. Taking the batch's permits up front would let two
        maps each hold part of them and wait for the rest for ever."""
        held: set[_Permit] = set()
        tasks = _permitted(items, self.__wrapped__, self.kind, limiter, held)
        try:
            return await sched.run_all(
                tasks,
                self.kind,
                self._width(limit),
                seconds,
                return_exceptions,
                limiter=self._limiter_arg,
                retry=self._retry,
            )
        finally:
            # A batch that failed or was cancelled leaves the generator unfinished:
            # close it here (trio warns about one left to the garbage collector).
            with anyio.CancelScope(shield=True):
                await tasks.aclose()
            for permit in list(held):
                permit.unused()  # taken for a task the batch never started

    async def _map_with_permits(
        self,
        sched: Scheduler,
        limiter: _ProcessLimiter,
        tasks: Any,
        width: int,
        seconds: float | None,
        return_exceptions: bool,
    ) -> list[Any]:
        """``map`` of a cpu function with a ``limit``: ``width`` workers, each taking one
        of the function's permits per task, exactly like single calls (a cpu task runs
        in a worker process, which cannot give a permit back itself).

        Why not take ``width`` permits up front: two maps that each hold part of them
        would wait for the rest forever. A worker holds at most one permit, and only
        while its task runs, so every permit taken is given back.
        """
        lane = sched._lane(self.kind)
        source = Source(tasks, lane.check_task)  # a list is checked before anything runs
        results: dict[int, Any] = {}
        failure: list[BaseException] = []

        async def worker(scope: anyio.CancelScope) -> None:
            while True:
                item = await source.next()
                if item is END:
                    return
                index, task = item
                await limiter.acquire()
                try:
                    value = (
                        await sched.run_all(
                            [task],
                            self.kind,
                            1,
                            seconds,
                            limiter=self._limiter_arg,
                            retry=self._retry,
                        )
                    )[0]
                except Exception as exc:
                    _drop_batch_note(exc)
                    if isinstance(exc, (TaskTimeout, WorkerCrashed)):
                        exc.index = index  # it ran as task 0 of a batch of one
                    annotate(exc, index)
                    if not return_exceptions:
                        if not failure:
                            failure.append(exc)
                        scope.cancel()
                        return
                    value = exc
                finally:
                    limiter.release()
                results[index] = value

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(width):
                    tg.start_soon(worker, tg.cancel_scope)
        finally:
            source.close()
        if failure:
            raise failure[0]
        return [results[i] for i in range(source.pulled)]

    def __repr__(self) -> str:
        return f"<offloaded {self.__qualname__} kind={self.kind!r}>"


class _AutoCall:
    """A call of an `@offload(kind="auto")` function: runs the original and pickles by
    reference to the decorated function (as a cpu task does). It wears the original's
    `__code__`, `__qualname__` and `__module__`, so that `kind="auto"` measures and
    remembers the original, while the cpu lane's check pickles this object, not the
    original (which is not reachable by its name: the name is the decorated one)."""

    def __init__(
        self, fn: Offloaded[..., Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        original = fn.__wrapped__
        self.__code__ = getattr(original, "__code__", None)
        self.__qualname__ = fn.__qualname__
        self.__module__ = getattr(original, "__module__", None)  # type: ignore[assignment]

    def __call__(self) -> Any:
        return self.fn.__wrapped__(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_AutoCall, (self.fn, self.args, self.kwargs))

    def __repr__(self) -> str:
        return f"call({self.fn.__qualname__}, ...)"


class _PermitState(enum.Enum):
    HELD = "held"  # taken for a task not started yet
    RUNNING = "running"  # its task runs: the task gives it back
    RETURNED = "returned"


class _Permit:
    """One of a function's permits, taken for one task of a ``map``: given back once,
    by the task when it ends (on any thread), or by the map if the task never ran."""

    __slots__ = ("_held", "_limiter", "_lock", "state")

    def __init__(self, limiter: _ProcessLimiter, held: set[_Permit]) -> None:
        self._limiter = limiter
        self._held = held
        self._lock = threading.Lock()
        self.state = _PermitState.HELD
        held.add(self)

    def start(self) -> None:
        with self._lock:
            self.state = _PermitState.RUNNING

    def give_back(self) -> None:
        with self._lock:
            if self.state is _PermitState.RETURNED:
                return
            self.state = _PermitState.RETURNED
        self._held.discard(self)
        self._limiter.release()

    def unused(self) -> None:
        with self._lock:
            if self.state is not _PermitState.HELD:
                return  # its task ran and gives it back itself
        self.give_back()


def _run_blocking_with_permit(permit: _Permit, fn: Callable[[Any], Any], item: Any) -> Any:
    permit.start()
    try:
        return fn(item)
    finally:
        permit.give_back()


async def _run_io_with_permit(permit: _Permit, fn: Callable[[Any], Any], item: Any) -> Any:
    permit.start()
    try:
        return await fn(item)
    finally:
        permit.give_back()


async def _permitted(
    items: Iterable[Any] | AsyncIterable[Any],
    fn: Callable[[Any], Any],
    kind: str,
    limiter: _ProcessLimiter,
    held: set[_Permit],
) -> AsyncGenerator[Call[Any], None]:
    """The tasks of a limited ``map``: each one yielded only once it holds a permit, so
    waiting for a permit takes no thread and no lane slot."""
    run = _run_io_with_permit if kind == "io" else _run_blocking_with_permit
    if isinstance(items, AsyncIterable):
        async for item in items:
            await limiter.acquire()
            yield Call(run, (_Permit(limiter, held), fn, item), {})
    else:
        for item in items:
            await limiter.acquire()
            yield Call(run, (_Permit(limiter, held), fn, item), {})


def _drop_batch_note(exc: BaseException) -> None:
    # A single call is no batch: the "task 0 of the batch" note would only confuse.
    notes = getattr(exc, "__notes__", None)
    if notes:
        exc.__notes__ = [n for n in notes if not n.startswith("(tasklanes: raised by task")]


@overload
def offload(fn: Callable[P, R], /) -> Offloaded[P, R, R]: ...
@overload
def offload(
    *,
    kind: Literal["blocking", "cpu", "auto"] = "blocking",
    limit: int | None = None,
    timeout: float | None = None,
    scheduler: Scheduler | None = None,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> Callable[[Callable[P, R]], Offloaded[P, R, R]]: ...
@overload
def offload(
    *,
    kind: Literal["io"],
    limit: int | None = None,
    timeout: float | None = None,
    scheduler: Scheduler | None = None,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Offloaded[P, R, Awaitable[R]]]: ...
def offload(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    kind: str = "blocking",
    limit: int | None = None,
    timeout: float | None = None,
    scheduler: Scheduler | None = None,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> Any:
    """Turn a function into an awaitable one that runs on a lane.

    For example:

    ```python
    @offload                          # kind="blocking": on the worker threads
    def read_config(path: str) -> dict: ...

    @offload(kind="cpu", timeout=30)  # on the worker processes
    def render(frame: Frame) -> bytes: ...

    @offload(kind="io", limit=10)     # an async function, at most 10 calls at once
    async def fetch(url: str) -> bytes: ...

    @offload(kind="auto")             # measured on its first calls (see kind="auto")
    def crunch(block: bytes) -> int: ...

    data = await render(frame)
    many = await render.map(frames, limit=4)
    render.__wrapped__(frame)         # the original, in this thread
    ```

    ``limit`` bounds the function's concurrent calls across the process (per event
    loop for ``"io"``), on top of the lane's capacity; ``timeout`` bounds each call
    (each attempt, with ``retry``). ``limiter=`` and ``retry=`` work as for
    [`run_all`][tasklanes.run_all]; ``rate=`` is one
    [`Limiter`][tasklanes.Limiter] shared by every call of the function.
    A decorated module-level function works in the cpu lane: it pickles by reference.
    ``kind="auto"``: an ``async def`` function runs on the io lane; a sync one is
    measured on the blocking lane until [run_all][tasklanes.run_all]'s ``kind="auto"``
    has decided, per function and Scheduler, then runs on the lane it chose (write
    ``kind="io"`` for async functions if you want type checkers to follow).

    Cancellation: as for [run_all][tasklanes.run_all] with one task: a cancelled caller's io call is
    cancelled, its cpu worker killed, its blocking thread asked to stop and awaited.
    """
    kind = check_kind(kind)
    check_limit(limit)
    seconds = check_timeout(timeout)
    check_scheduler(scheduler)
    make_controls(limiter, rate, retry)  # bad arguments fail at decoration

    def decorate(func: Callable[..., Any]) -> Offloaded[Any, Any, Any]:
        if not callable(func):
            raise TypeError(f"@offload decorates a function, got {type(func).__name__}")
        from ._call import unwrap_callable
        from ._tasks import _is_async_function

        is_async = _is_async_function(unwrap_callable(func))
        if kind == "auto" and is_async:  # async code: auto would choose io every time
            return Offloaded(func, "io", limit, seconds, scheduler, limiter, rate, retry)
        if kind == "io" and not is_async:
            raise TypeError(
                f"@offload(kind='io') needs an async def function; {func.__qualname__} is "
                "sync: use kind='blocking' (code that waits) or kind='cpu' (code that computes)"
            )
        if kind != "io" and is_async:
            raise TypeError(
                f"@offload(kind={kind!r}) needs a sync function; {func.__qualname__} is "
                "async def: use kind='io'"
            )
        return Offloaded(func, kind, limit, seconds, scheduler, limiter, rate, retry)

    if fn is not None:
        return decorate(fn)
    return decorate
