"""``@offload``: a function turned into an awaitable one that runs on a lane."""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import anyio

from ._backend import LoopHandle
from ._call import Call
from ._control import make_controls
from ._limits import Limiter, LimiterArg, with_rate
from ._processes._pickling import importable_by_name
from ._retry import Retry
from ._scheduler import Scheduler, check_scheduler, scheduler_or_default
from ._tasks import check_kind, check_limit, check_timeout

__all__ = ["Offloaded", "offload"]

P = ParamSpec("P")
R = TypeVar("R")
W = TypeVar("W")  # what the original returns: R for sync functions, Awaitable[R] for io


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
        # The function's `limit`: a Limiter that every attempt of every call and map
        # takes (through `limiter=`, so per attempt, waiting without lane capacity).
        self._process_limiter = None if limit is None else Limiter(concurrency=limit)
        # io: one budget per event loop, keyed weakly so that it goes with its loop
        # (an asyncio loop, or a trio run's token): every asyncio.run would leak one.
        self._loop_limiters: weakref.WeakKeyDictionary[object, Limiter] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # rate= of the decorator is one budget for every call of the function.
        self._limiter_arg = with_rate(limiter, None if rate is None else Limiter(rate=rate))
        self._retry = retry

    def _limiter(self) -> Limiter | None:
        if self.limit is None:
            return None
        if self.kind != "io":
            return self._process_limiter
        key = LoopHandle().key
        with self._lock:
            limiter = self._loop_limiters.get(key)
            if limiter is None:
                limiter = self._loop_limiters[key] = Limiter(concurrency=self.limit)
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
        try:
            results = await sched.run_all(
                [self._task(args, kwargs)],
                self.kind,
                1,
                self.timeout,
                limiter=self._limiters(),
                retry=self._retry,
            )
        except BaseException as exc:
            _drop_batch_note(exc)
            raise
        result: R = results[0]
        return result

    def _limiters(self) -> LimiterArg:
        """`limiter=` of a call or map: the decorator's, plus the function's `limit`."""
        return with_rate(self._limiter_arg, self._limiter())

    async def map(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        limit: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[R]:
        """Call the function on each item, as one [run_all][tasklanes.run_all] batch.

        ``many = await render.map(frames, limit=4)``. The decorator's ``limit`` still
        bounds the function's calls across the process: it is a
        [`Limiter`][tasklanes.Limiter] that each attempt of a task takes, exactly like
        a single call's (and like `limiter=`: a retried attempt takes it again, and
        holds nothing during its backoff), so maps and single calls share the permits.
        Waiting for a permit takes no thread, worker or lane slot.

        Cancellation: as for [run_all][tasklanes.run_all]; permits taken for tasks
        that never started are given back before this returns or raises.
        """
        sched = scheduler_or_default(self._scheduler)
        check_limit(limit)
        seconds = self.timeout if timeout is None else check_timeout(timeout)
        if isinstance(items, AsyncIterable):

            async def agen() -> Any:
                async for item in items:
                    yield self._task((item,), {})

            tasks: Any = agen()
        elif isinstance(items, Iterable):
            tasks = [self._task((item,), {}) for item in items]
        else:
            raise TypeError(
                f"map() needs an iterable or async iterable, got {type(items).__name__}"
            )
        try:
            return await sched.run_all(
                tasks,
                self.kind,
                limit if self.limit is None else self._width(limit),
                seconds,
                return_exceptions,
                limiter=self._limiters(),
                retry=self._retry,
            )
        finally:
            if not isinstance(tasks, list):  # our generator: close it, finished or not
                with anyio.CancelScope(shield=True):
                    await tasks.aclose()

    def _width(self, limit: int | None) -> int:
        """How many tasks of a ``map`` run at once: its own ``limit`` within the
        decorator's."""
        assert self.limit is not None
        return self.limit if limit is None else min(limit, self.limit)

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
