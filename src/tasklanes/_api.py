"""The public batch API: module-level functions on the default (or a given) Scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

# The machinery (anyio, asyncio, the scheduler and its lanes) is imported on first
# use, not here. Why: ``from tasklanes import run_all_sync`` at the top of a script
# is re-run by the cpu lane's forkserver, which preloads the script to fork workers
# from it; the workers never need that machinery, and a one-shot script waits for
# the forkserver before its first task runs.
if TYPE_CHECKING:
    from ._batch import BatchIterator
    from ._limits import LimiterArg
    from ._progress import ProgressArg
    from ._retry import Retry
    from ._scheduler import Scheduler

__all__ = ["amap", "as_completed", "run_all", "run_all_sync"]

T = TypeVar("T")
A = TypeVar("A")

IoTask = Awaitable[T] | Callable[[], Awaitable[T]]
Tasks = Iterable[T] | AsyncIterable[T]


def scheduler_or_default(scheduler: Scheduler | None) -> Scheduler:
    from ._scheduler import scheduler_or_default as resolve

    return resolve(scheduler)


# -- run_all ------------------------------------------------------------------------


@overload
async def run_all(
    tasks: Tasks[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T]: ...
@overload
async def run_all(
    tasks: Tasks[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T | BaseException]: ...
@overload
async def run_all(
    tasks: Tasks[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T]: ...
@overload
async def run_all(
    tasks: Tasks[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T | BaseException]: ...
@overload
async def run_all(
    tasks: Tasks[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[Any]: ...
async def run_all(
    tasks: Tasks[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[Any]:
    """Run every task of one kind concurrently; return their results in input order.

    For example:

    ```python
    pages = await run_all([call(fetch, url) for url in urls], limit=20, timeout=10)
    sizes = await run_all([call(os.path.getsize, p) for p in paths], kind="blocking")
    frames = await run_all([call(render, f) for f in scene], kind="cpu")
    ```

    ``tasks`` is any iterable or async iterable, consumed lazily. ``kind`` says where
    they run: ``"io"`` (coroutines, awaitables or zero-argument callables returning
    one, on this event loop), ``"blocking"`` (zero-argument sync callables, on the
    shared worker threads), ``"cpu"`` (picklable zero-argument sync callables, on the
    shared worker processes) or ``"auto"`` (tasklanes measures the first tasks and
    picks one of the three; see "Which kind?" in the docs). ``limit`` bounds how many
    of this call's tasks run at once (default: the lane's capacity); ``timeout``
    bounds each task, in seconds: an overrun fails that task with
    [TaskTimeout][tasklanes.TaskTimeout].

    The first failure cancels the rest and is raised as itself, with a note naming
    the task's index; with ``return_exceptions=True`` every task runs and a failed
    slot holds its exception. ``progress=True`` draws a bar on stderr; a callable
    receives [ProgressUpdate][tasklanes.ProgressUpdate] objects.

    ``limiter=`` (a [`Limiter`][tasklanes.Limiter], a list of them, or a function of
    the task returning them) admits a task only when its limiters do, and holds them
    until the task is really over; ``rate=`` is a private ``Limiter(rate=rate)`` for
    this call; ``retry=`` (attempts, or a [`Retry`][tasklanes.Retry]) runs failed tasks
    again. Waiting for a limiter or a backoff takes no thread or worker process, only
    one of the call's ``limit`` slots. See [Limits](limits.md).

    Cancellation: when the caller is cancelled (or the batch fails fast), tasks not
    yet started never start, running io tasks are cancelled, running cpu tasks'
    worker processes are killed, and running blocking tasks are asked to stop
    ([check_cancelled][tasklanes.check_cancelled] raises in them); ``run_all`` returns
    or raises only once their threads have returned, so no work of the batch outlives
    the call.
    """
    sched = scheduler_or_default(scheduler)
    return await sched.run_all(
        tasks, kind, limit, timeout, return_exceptions, progress, limiter, rate, retry
    )


# -- as_completed -------------------------------------------------------------------


@overload
def as_completed(
    tasks: Tasks[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, T]]: ...
@overload
def as_completed(
    tasks: Tasks[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, T | BaseException]]: ...
@overload
def as_completed(
    tasks: Tasks[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, T]]: ...
@overload
def as_completed(
    tasks: Tasks[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, T | BaseException]]: ...
@overload
def as_completed(
    tasks: Tasks[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, Any]]: ...
def as_completed(
    tasks: Tasks[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[tuple[int, Any]]:
    """Run tasks like [run_all][tasklanes.run_all], yielding ``(index, result)`` as each finishes.

    For example:

    ```python
    async with as_completed(call(fetch, u) for u in urls) as pages:
        async for index, page in pages:
            print(urls[index], len(page))
    ```

    Bad arguments raise here, before the loop starts. With
    ``return_exceptions=False`` the first failure is raised from the loop (after the
    results that finished before it); with ``True`` failures are yielded.

    Cancellation: leaving the ``async with`` block, however it is left (``break``,
    an exception, cancellation), stops the batch exactly as a cancelled [run_all][tasklanes.run_all]
    does, before the block is exited. Without the block, the work stops when the
    loop ends by an exception or cancellation while it waits for a result, or when
    the iterator is closed (``aclose()``) or collected; a ``break`` alone stops
    nothing while the iterator is still referenced.
    """
    sched = scheduler_or_default(scheduler)
    return sched.as_completed(
        tasks, kind, limit, timeout, return_exceptions, progress, limiter, rate, retry
    )


# -- amap -------------------------------------------------------------------------


@overload
def amap(
    fn: Callable[[A], Awaitable[T]],
    items: Tasks[A],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    ordered: bool = True,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[T]: ...
@overload
def amap(
    fn: Callable[[A], T],
    items: Tasks[A],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    ordered: bool = True,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[T]: ...
@overload
def amap(
    fn: Callable[[A], Any],
    items: Tasks[A],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[Any]: ...
def amap(
    fn: Callable[[A], Any],
    items: Tasks[A],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> BatchIterator[Any]:
    """Run ``fn(item)`` for each item, yielding the results (in input order by default).

    For example:

    ```python
    async with amap(make_thumbnail, paths, kind="cpu", limit=4) as thumbs:
        async for thumb in thumbs:
            save(thumb)
    ```

    ``items`` may be endless or an async iterable: memory is bounded by ``limit``,
    not by the number of items, because items are pulled only as results are
    consumed. ``ordered=False`` yields results as they finish.

    Cancellation: as for [as_completed][tasklanes.as_completed].
    """
    sched = scheduler_or_default(scheduler)
    return sched.amap(
        fn, items, kind, limit, timeout, ordered, return_exceptions, progress, limiter, rate, retry
    )


# -- from sync code ------------------------------------------------------------------


@overload
def run_all_sync(
    tasks: Iterable[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T]: ...
@overload
def run_all_sync(
    tasks: Iterable[IoTask[T]],
    kind: Literal["io"] = "io",
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T | BaseException]: ...
@overload
def run_all_sync(
    tasks: Iterable[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: Literal[False] = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T]: ...
@overload
def run_all_sync(
    tasks: Iterable[Callable[[], T]],
    kind: Literal["blocking", "cpu"],
    limit: int | None = None,
    timeout: float | None = None,
    *,
    return_exceptions: Literal[True],
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[T | BaseException]: ...
@overload
def run_all_sync(
    tasks: Iterable[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[Any]: ...
def run_all_sync(
    tasks: Iterable[Any],
    kind: str = "io",
    limit: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    scheduler: Scheduler | None = None,
    progress: ProgressArg = False,
    limiter: LimiterArg = None,
    rate: float | None = None,
    retry: int | Retry | None = None,
) -> list[Any]:
    """[run_all][tasklanes.run_all] for plain scripts: runs its own event loop and returns the list.

    For example:

    ```python
    results = run_all_sync([call(crunch, chunk) for chunk in chunks], kind="cpu")
    ```

    Raises ``RuntimeError`` when called inside a running event loop, which includes a
    Jupyter or IPython notebook cell: write ``await run_all(...)`` there. Ctrl-C stops
    the batch as a cancellation does and raises ``KeyboardInterrupt``.

    A list (or tuple) of tasks on the cpu lane's own worker processes, without
    ``progress``, ``limiter``, ``rate`` or ``retry``, runs without an event loop: the
    calling thread waits for the pool, and nothing of asyncio or anyio is imported
    (the quickest start for a one-shot script). The results, errors, timeouts and
    Ctrl-C are the same.
    """
    sched = scheduler_or_default(scheduler)
    return sched.run_all_sync(
        tasks, kind, limit, timeout, return_exceptions, progress, limiter, rate, retry
    )
