"""``call``: a typed, picklable zero-argument task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["Call", "call", "call_each", "unwrap_callable"]

T = TypeVar("T")
P = ParamSpec("P")

_new = object.__new__
#: The keyword arguments of every `Call` made without any: shared, never mutated.
_NO_KWARGS: dict[str, Any] = {}


class Call(Generic[T]):
    """A function bound to its arguments, run later by a lane: ``call(fn, *args, **kwargs)``.

    Calling it runs ``fn(*args, **kwargs)``. It pickles when ``fn`` and the arguments
    do, so it is the usual way to build cpu tasks; for an ``async def`` function it
    makes an io task, and nothing runs until the lane starts it. Its ``fn``, ``args``
    and ``kwargs`` are read-only by convention (calls without keyword arguments share
    one empty ``kwargs`` dict).
    """

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> T:
        return self.fn(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Call, (self.fn, self.args, self.kwargs))

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = ", ".join(parts)
        if len(text) > 60:
            text = text[:57] + "..."
        return f"call({name}{', ' if text else ''}{text})"


def call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Call[T]:
    """Bind ``fn`` to its arguments, to run later as a task of any kind.

    For example:

    ```python
    await run_all([call(fetch, url) for url in urls])                 # io: fetch is async
    await run_all([call(render, f) for f in frames], kind="cpu")      # picklable
    ```
    """
    if not callable(fn):
        raise TypeError(f"call() needs a callable first, got {type(fn).__name__}")
    # Built field by field rather than through `Call(...)`: a batch builds thousands
    # of these inside the caller's timed code, and this is about a third cheaper.
    task: Call[T] = _new(Call)
    task.fn = fn
    task.args = args
    task.kwargs = kwargs or _NO_KWARGS
    return task


def call_each(fn: Callable[[Any], T], items: Iterable[Any]) -> Iterator[Call[T]]:
    """`call(fn, item)` for each of `items`, lazily: the tasks of `amap`, built as
    cheaply as `call` builds one (`fn` checked by the caller)."""
    new = _new
    no_kwargs = _NO_KWARGS
    for item in items:
        task: Call[T] = new(Call)
        task.fn = fn
        task.args = (item,)
        task.kwargs = no_kwargs
        yield task


def unwrap_callable(obj: object, *, through_wrappers: bool = True) -> object:
    """The function a task finally calls: through ``Call``, ``functools.partial`` and
    (with `through_wrappers`) ``offload`` wrappers. Without them, the object the task
    calls first (an ``offload`` wrapper's call makes a coroutine, whatever it wraps).
    Used only to check a task against its kind."""
    import functools

    for _ in range(20):  # a cycle of wrappers is absurd, but never loop forever
        if isinstance(obj, Call):
            obj = obj.fn
        elif isinstance(obj, functools.partial):
            obj = obj.func
        elif through_wrappers and hasattr(obj, "__tasklanes_wrapped__"):
            obj = obj.__tasklanes_wrapped__
        else:
            break
    return obj
