"""Checking arguments and tasks, and pulling tasks lazily from the caller's input.

Everything here runs before or between tasks, never inside one. The rule it serves:
bad input fails with a clear ``ValueError``/``TypeError`` before any task starts.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sized
from itertools import islice
from types import BuiltinFunctionType, CoroutineType, FunctionType
from typing import TYPE_CHECKING, Any, Final

from ._call import Call, unwrap_callable

if TYPE_CHECKING:
    import anyio


__all__ = [
    "END",
    "KINDS",
    "WAIT",
    "Source",
    "check_cpu_task",
    "check_kind",
    "check_limit",
    "check_timeout",
    "describe",
]

KINDS: Final = ("io", "blocking", "cpu")


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``Source.next_nowait`` results: no more tasks / ask again with ``await next()``.
END: Final = _Marker("END")
WAIT: Final = _Marker("WAIT")


def check_kind(kind: object) -> str:
    """A valid ``kind=``: one of `KINDS` (the lanes) or ``"auto"`` (see `_auto`)."""
    if kind not in KINDS and kind != "auto":
        raise ValueError(
            f"unknown kind {kind!r}: use one of 'io' (coroutines on the event loop), "
            "'blocking' (sync code that waits, on threads), 'cpu' (sync code that "
            "computes, on processes) or 'auto' (tasklanes measures and picks one)"
        )
    return str(kind)


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int >= 1 or None, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for the lane's capacity), got {limit}")
    return limit


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
        )
    if not timeout > 0 or math.isnan(timeout):
        raise ValueError(f"timeout must be > 0 seconds (or None for no timeout), got {timeout}")
    return float(timeout)


def describe(task: object) -> str:
    text = repr(task)
    return text if len(text) <= 80 else text[:77] + "..."


# `inspect` costs a one-shot script ~5 ms to import, and the common cases need none of
# it: a plain `def` says in its code flags whether it is async, a builtin never is, a
# `Call` is never awaitable. Anything else asks `inspect`, imported then.
_ASYNC_FLAGS = 0x80 | 0x200  # CO_COROUTINE | CO_ASYNC_GENERATOR (inspect's values)


def _is_async_function(fn: object) -> bool:
    kind = type(fn)
    if kind is FunctionType:
        if fn.__code__.co_flags & _ASYNC_FLAGS:  # type: ignore[attr-defined]
            return True
        # Python 3.12's inspect.markcoroutinefunction marks a plain def as async.
        if sys.version_info < (3, 12) or not hasattr(fn, "_is_coroutine_marker"):
            return False
    elif kind is BuiltinFunctionType:
        return False
    import inspect

    return bool(inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))


def _is_awaitable(task: object) -> bool:
    kind = type(task)
    if kind is Call or kind is functools.partial or kind is FunctionType:
        return False
    if kind is CoroutineType:
        return True
    import inspect

    return inspect.isawaitable(task)


def check_io_task(task: object, index: int) -> None:
    if type(task) is CoroutineType or _is_awaitable(task):
        return
    if not callable(task):
        raise TypeError(
            f"task {index} ({describe(task)}) is not a task for kind='io': give a coroutine, "
            "an awaitable, or a zero-argument callable that returns one (e.g. call(fetch, url))"
        )
    fn = unwrap_callable(task)
    if _is_async_function(fn) or _calls_async_object(task):
        return
    # A named plain function, a builtin or a class is sync code: awaiting it is
    # impossible and running it on the loop would freeze every other task. A lambda
    # or a callable object may return an awaitable, so those are checked when they
    # run instead.
    import inspect

    if (
        inspect.isbuiltin(fn)
        or inspect.isclass(fn)
        or (inspect.isfunction(fn) and fn.__name__ != "<lambda>")
        or (inspect.ismethod(fn) and not _is_async_function(fn.__func__))
    ):
        raise TypeError(
            f"task {index} ({describe(task)}) is a sync callable, which kind='io' cannot await: "
            "use kind='blocking' for sync code that waits (I/O, sleeps, old drivers) or "
            "kind='cpu' for sync code that computes"
        )


def check_sync_task(task: object, index: int, kind: str) -> None:
    if _is_awaitable(task):
        raise TypeError(
            f"task {index} ({describe(task)}) is a coroutine or awaitable, which kind={kind!r} "
            "cannot run: use kind='io' for async code"
        )
    if not callable(task):
        raise TypeError(
            f"task {index} ({describe(task)}) is not a task for kind={kind!r}: give a "
            "zero-argument callable, e.g. call(fn, *args) or functools.partial(fn, *args)"
        )
    if _is_async_function(unwrap_callable(task)):
        raise TypeError(
            f"task {index} ({describe(task)}) calls an async function, which kind={kind!r} "
            "cannot await: use kind='io' for async code"
        )
    if _calls_async_object(task):
        target = unwrap_callable(task, through_wrappers=False)
        # An object whose ``__call__`` is async, an `@offload` function above all:
        # `unwrap_callable` sees through it to the plain function it checks, but
        # calling the object makes a coroutine, which a worker would return (or fail
        # to pickle) instead of running the function.
        name = getattr(target, "__qualname__", type(target).__name__)
        plain = (
            f"its plain function ({name}.__wrapped__)"
            if hasattr(target, "__wrapped__")
            else "a plain function"
        )
        raise TypeError(
            f"task {index} ({describe(task)}) calls {name}, whose call returns an "
            f"awaitable (an @offload function?), which kind={kind!r} cannot await: give "
            f"{plain} here, or await it with kind='io'"
        )


_PLAIN_FUNCTIONS = (FunctionType, BuiltinFunctionType, type)


def _calls_async_object(task: object) -> bool:
    """Whether the task first calls an object whose ``__call__`` is async (an
    `@offload` function): calling it makes a coroutine, whatever it wraps."""
    target = unwrap_callable(task, through_wrappers=False)
    if isinstance(target, _PLAIN_FUNCTIONS) or not callable(target):
        return False
    return _is_async_function(type(target).__call__)


def check_cpu_task(task: object, index: int, *, strict_pickle: bool = True) -> None:
    """Check a cpu task; with ``strict_pickle``, refuse what plain pickle cannot send.

    Lambdas and closures are the usual mistake: pickle sends functions by name, so
    only module-level functions travel to another process. (Dask pickles with
    cloudpickle, which sends them too: its lane passes ``strict_pickle=False``.)
    """
    check_sync_task(task, index, "cpu")
    if not strict_pickle:
        return
    fn = unwrap_callable(task)
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"task {index} calls {qualname}, which cannot be sent to a worker process: "
            "kind='cpu' needs a module-level function (def at the top of a module), "
            "wrapped with call(fn, *args) or functools.partial; lambdas and functions "
            "defined inside other functions do not pickle"
        )

class CachedCheck:
    """A task check that remembers the functions it has passed.

    Whether ``call(fn, ...)`` or ``partial(fn, ...)`` fits a kind depends only on
    ``fn``, and a batch usually calls one function many times: checking it once keeps
    the up-front check of a 20k-task list at ~0.2 us a task instead of ~10 us.
    """

    __slots__ = ("_check", "_passed", "trusted")

    def __init__(
        self, check: Callable[[object, int], None], trusted: frozenset[type] = frozenset()
    ) -> None:
        self._check = check
        self._passed: dict[int, object] = {}
        #: Types ``check`` always passes: a bulk pull (``Source.take``) skips them.
        self.trusted = trusted

    def __call__(self, task: object, index: int) -> None:
        kind = type(task)
        if kind is Call:
            fn = task.fn  # type: ignore[attr-defined]
        elif kind is functools.partial:
            fn = task.func  # type: ignore[attr-defined]
        else:
            self._check(task, index)
            return
        passed = self._passed
        if passed.get(id(fn)) is fn:
            return
        self._check(task, index)
        if len(passed) >= 4096:  # functions are few; this only bounds a pathological case
            passed.clear()
        passed[id(fn)] = fn  # holding fn keeps its id from being reused

    def check_many(self, tasks: list[Any] | tuple[Any, ...], start: int) -> None:
        """Check `tasks` (indexes from `start`) as calling `self` on each would, in
        bulk when they are all `Call`s (or all partials): the functions are gathered
        in C, and only a function not passed yet is checked, at its first task."""
        if not tasks:
            return
        kinds = list(map(type, tasks))  # counted below: cheaper than a set of them
        # The functions by a comprehension: a specialised attribute read per task,
        # about three times cheaper than `map(operator.attrgetter(...), tasks)`.
        if kinds.count(Call) == len(kinds):
            fns = [task.fn for task in tasks]
        elif kinds.count(functools.partial) == len(kinds):
            fns = [task.func for task in tasks]
        else:
            for index, task in enumerate(tasks, start):
                self(task, index)
            return
        passed = self._passed
        first = fns[0]
        try:
            # The common case, one function for the whole batch: a C-level count
            # (identity first) instead of the id of every task's function.
            alone = fns.count(first) == len(fns)
        except Exception:  # a callable object whose `==` raises: the long way
            alone = False
        if alone:
            if passed.get(id(first)) is not first:
                self(tasks[0], start)
            return
        for key in dict.fromkeys(map(id, fns)):  # in order of first appearance
            if key not in passed:
                i = next(i for i, fn in enumerate(fns) if id(fn) == key)
                self(tasks[i], start + i)


def close_if_coroutine(task: object) -> None:
    """Close a coroutine object that will never run, so Python does not warn that it
    was never awaited: it was ours to run, and we chose not to."""
    close = getattr(task, "close", None)
    if close is not None and isinstance(task, CoroutineType):
        close()


class Source:
    """The tasks of one batch, pulled one at a time as workers become free.

    A list or tuple is checked whole before anything starts; any other iterable or
    async iterable is consumed lazily and each task is checked as it is pulled, so at
    most the running tasks plus a small buffer are ever materialised.

    ``gate`` (optional) is asked before each pull whether the consumer can take more;
    when it says no, pullers wait until ``release()`` is called. The iterator APIs use
    it to bound memory when their consumer is slower than the tasks.
    """

    def __init__(
        self,
        tasks: Iterable[Any] | AsyncIterable[Any],
        check: Callable[[object, int], None],
    ) -> None:
        self._check = check
        self._index = 0
        self._ended = False
        self._sequence: list[Any] | tuple[Any, ...] | None = None
        self._iterator: Iterator[Any] | None = None
        self._aiterator: AsyncIterator[Any] | None = None
        self._alock: anyio.Lock | None = None
        self._gate: Callable[[int], bool] | None = None
        self._gate_room: Callable[[int], int] | None = None
        self._gate_event: anyio.Event | None = None
        #: An input error met by a bulk ``take`` after some tasks: raised next time.
        self._pending_error: Exception | None = None
        self.size: int | None = None
        #: Types that always pass ``check`` (the io lane's coroutines): a bulk pull of
        #: nothing else skips the per-task check.
        self.trusted: frozenset[type] = getattr(check, "trusted", frozenset())
        #: A list input whose tasks are all of the ``trusted`` types (checked at once).
        self.all_trusted = False
        if isinstance(tasks, (list, tuple)):
            if self.trusted and set(map(type, tasks)) <= self.trusted:
                self.all_trusted = True
            else:
                self._check_all(tasks, check)
            self._sequence = tasks
            self.size = len(tasks)
            self._iterator = iter(tasks)
        elif isinstance(tasks, AsyncIterable):
            import anyio  # only here: a script's list input never loads it

            self._aiterator = aiter(tasks)
            self._alock = anyio.Lock()
        elif isinstance(tasks, Iterable) and not isinstance(tasks, (str, bytes)):
            self._iterator = iter(tasks)
            if isinstance(tasks, Sized):  # a range, a dict view: sized, yet lazy
                self.size = len(tasks)
        else:
            raise TypeError(
                f"tasks must be an iterable or async iterable of tasks, got {type(tasks).__name__}"
            )

    @staticmethod
    def _check_all(
        tasks: list[Any] | tuple[Any, ...], check: Callable[[object, int], None]
    ) -> None:
        check_many = getattr(check, "check_many", None)
        try:
            if check_many is not None:
                check_many(tasks, 0)
            else:
                for index, task in enumerate(tasks):
                    check(task, index)
        except BaseException:
            for other in tasks:
                close_if_coroutine(other)
            raise

    @property
    def pulled(self) -> int:
        """How many tasks have been taken so far (the next task's index)."""
        return self._index

    @property
    def in_memory(self) -> bool:
        """The input is a list or tuple: its tasks are materialised already."""
        return self._sequence is not None

    @property
    def exhausted(self) -> bool:
        return self._ended

    @property
    def is_async(self) -> bool:
        """The input is an async iterable: ``take`` gives nothing, ``await next()`` does."""
        return self._aiterator is not None

    def set_gate(
        self, gate: Callable[[int], bool], room: Callable[[int], int] | None = None
    ) -> None:
        """Pull task `index` only while `gate(index)` says yes. `room(index)`, if
        given, says in one call how many tasks from `index` on the gate lets through
        now (its answers must agree): `take` then pulls them in bulk."""
        self._gate = gate
        self._gate_room = room

    def blocked(self) -> bool:
        """The gate holds the next task back (the consumer must catch up first)."""
        return self._gate is not None and not self._ended and not self._gate(self._index)

    def release(self) -> None:
        """The gate may say yes now: wake the pullers waiting on it."""
        if self._gate_event is not None:
            self._gate_event.set()
            self._gate_event = None

    def next_nowait(self) -> Any:
        """``(index, task)``, or ``END``, or ``WAIT`` (call ``await next()``)."""
        if self._ended:
            return END
        if self._gate is not None and not self._gate(self._index):
            return WAIT
        it = self._iterator
        if it is None:
            return WAIT
        try:
            task = next(it)
        except StopIteration:
            self._ended = True
            return END
        index = self._index
        self._index = index + 1
        if self._sequence is None:
            self._check(task, index)
        return (index, task)

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` tasks that need no waiting, in one step; the first one's index
        is ``pulled`` as it was before the call (indexes are consecutive).

        A sync iterator without a gate is read in bulk (one ``islice``, the checks in
        one loop, skipped for the ``trusted`` types); a gated one task by task, asking
        the gate each time; an async iterator gives nothing here (``await next()``).
        When a task fails its check, the ones taken with it are closed (they never
        run) and the error is raised.
        """
        it = self._iterator
        if self._pending_error is not None:
            exc, self._pending_error = self._pending_error, None
            self._ended = True
            raise exc
        if self._ended or it is None or n <= 0:
            return []
        if self._gate is not None:
            room = self._gate_room
            if room is None:
                out: list[Any] = []
                while len(out) < n:
                    item = self.next_nowait()
                    if item is END or item is WAIT:
                        break
                    out.append(item[1])
                return out
            n = min(n, room(self._index))
            if n <= 0:
                return []
        start = self._index
        tasks: list[Any] = []
        try:
            # ``extend`` keeps what it appended when the input raises part-way: those
            # tasks were taken and are handed out (the error fails the batch anyway,
            # on the next pull).
            tasks.extend(islice(it, n))
        except Exception as exc:
            if not tasks:
                raise
            self._pending_error = exc
        if len(tasks) < n:
            self._ended = self._pending_error is None
        self._index = start + len(tasks)
        # (The set of types only where some are trusted: the io lane's coroutines.
        # For the cpu lane's tasks it was a wasted pass over every task pulled.)
        trusted = self.trusted
        if self._sequence is None and (not trusted or not set(map(type, tasks)) <= trusted):
            check = self._check
            check_many = getattr(check, "check_many", None)
            try:
                if check_many is not None:
                    check_many(tasks, start)
                else:
                    for index, task in enumerate(tasks, start):
                        check(task, index)
            except BaseException:
                for task in tasks:
                    close_if_coroutine(task)
                raise
        return tasks

    async def next(self) -> Any:
        """``(index, task)`` or ``END``, waiting for the gate or an async iterator."""
        while True:
            if self._ended:
                return END
            if self._gate is not None and not self._gate(self._index):
                if self._gate_event is None:
                    import anyio

                    self._gate_event = anyio.Event()
                await self._gate_event.wait()
                continue
            if self._aiterator is None:
                return self.next_nowait()
            assert self._alock is not None
            async with self._alock:
                if self._ended:
                    return END
                if self._gate is not None and not self._gate(self._index):
                    continue
                try:
                    task = await anext(self._aiterator)
                except StopAsyncIteration:
                    self._ended = True
                    return END
                index = self._index
                self._index = index + 1
            self._check(task, index)
            return (index, task)

    def task_at(self, index: int) -> Any:
        """Task ``index`` of a list input again (``retry=`` runs it once more)."""
        assert self._sequence is not None
        return self._sequence[index]

    def take_rest(self) -> list[Any] | None:
        """Every remaining task of a list input at once (checked already; the first
        one's index is `pulled` as it was before the call), or ``None`` when the input
        is lazy or gated: then pull in steps."""
        if self._sequence is None or self._gate is not None or self._ended:
            return None
        start = self._index
        rest = list(self._sequence[start:]) if start else list(self._sequence)
        self._index = start + len(rest)
        self._ended = True
        self._iterator = None
        return rest

    def close(self) -> None:
        """Stop pulling. Coroutines of a list input that never started are closed."""
        self._ended = True
        if self._sequence is not None and self._iterator is not None:
            for task in self._iterator:
                close_if_coroutine(task)
        self._iterator = None
