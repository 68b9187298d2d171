"""One batch of tasks on one lane, and the three ways to consume it.

A *lane* runs a `Batch`: it pulls ``(index, task)`` pairs from ``batch.source``
as it has room, and hands every outcome to ``batch.emit(index, ok, value)`` on the
caller's event loop. The lane knows how to run a task; the batch knows what the
caller wants done with the outcomes:

* ``run_all`` collects them into a list in input order (`collect`);
* ``as_completed`` and ``amap`` hand them to an ``async for`` loop
  ([BatchIterator][tasklanes.BatchIterator]).

Fail-fast is the same for every lane: the first failure calls ``batch.fail``, which
cancels the batch's cancel scope; the lane then stops its work exactly as it would
for a cancelled caller, and the failure is raised once the lane has cleaned up.

One file past 500 lines on purpose: `Batch` is the contract between the lanes and
its three consumers, and `run_batch` and each consumer share the batch's life cycle
(its scope, `stop`, `_end`) in a few lines of that contract; split, every change to
the hand-over (bulk successes, `map_fn`, `halt`) would touch several modules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._stats import LaneStats
from ._tasks import Source

# anyio and the event-loop shim are imported where they are used: the cpu lane's
# sync path (`collect_blocking`, from `run_all_sync` in a plain script) runs without
# an event loop and without loading them.
if TYPE_CHECKING:
    import anyio

    from ._backend import LoopHandle, TaskScope
    from ._control import Controls
    from ._progress import Progress

__all__ = ["Batch", "BatchIterator", "Lane", "collect", "collect_blocking", "run_batch"]

T_co = TypeVar("T_co", covariant=True)


class Lane(Protocol):
    """What the Scheduler needs of a lane: a kind, a capacity, a way to check a task
    before anything starts, a way to run a batch, and a way to stop."""

    kind: str
    capacity: int
    stats: LaneStats

    @property
    def check_task(self) -> Callable[[object, int], None]:
        """Raise ``TypeError`` if a task does not fit the lane (before anything starts)."""
        ...

    async def run(self, batch: Batch) -> None:
        """Run every task of ``batch``, at most ``batch.limit`` at once.

        Return when the source is exhausted and every pulled task has an outcome.
        When cancelled (the caller's scope, or ``batch.fail``), stop pulling, stop or
        kill what runs, wait until none of the batch's work is left, then re-raise.
        """
        ...

    def close(self) -> None: ...


class Batch:
    """The shared state of one batch: its input, its options, and where outcomes go."""

    __slots__ = (
        "controls",
        "emit",
        "emit_ok",
        "emit_ok_many",
        "error",
        "filled",
        "halt",
        "limit",
        "loop",
        "map_fn",
        "progress",
        "results",
        "scope",
        "source",
        "stopping",
        "streams",
        "timeout",
        "wake",
        "widen",
    )

    def __init__(
        self,
        source: Source,
        limit: int,
        timeout: float | None,
        emit: Callable[[int, bool, Any], None],
        loop: LoopHandle | None,
        progress: Progress | None = None,
        emit_ok_many: Callable[[Sequence[int], list[Any]], None] | None = None,
        emit_ok: Callable[[int, Any], None] | None = None,
        controls: Controls | None = None,
    ) -> None:
        self.source = source
        self.limit = limit
        self.timeout = timeout
        self.emit = emit
        #: Many successes at once, ``(indexes, values)``: what ``emit(i, True, v)`` does
        #: for each pair, in one step. Lanes that deliver outcomes in bulk use it;
        #: ``indexes`` may be a ``range`` (consecutive tasks: ``run_all`` then stores
        #: ``values`` as one block), and the consumer may keep ``values``.
        self.emit_ok_many = emit_ok_many or self._emit_ok_each
        #: One success, ``(index, value)``: what ``emit(index, True, value)`` does, as
        #: cheaply as the consumer can (for ``run_all``, a bare dict store).
        self.emit_ok = emit_ok or self._emit_ok_one
        #: The caller's event loop. A batch run without one (`collect_blocking`) has
        #: None here; it only goes to a lane's ``run_blocking``, which never looks.
        self.loop: LoopHandle = loop  # type: ignore[assignment]
        self.progress = progress
        self.error: BaseException | None = None
        #: Set once the batch wants no more tasks started: lanes check it before pulling.
        self.stopping = False
        #: ``anyio.CancelScope``, or on asyncio the io lane's `TaskScope`: what
        #: `stop` cancels.
        self.scope: anyio.CancelScope | TaskScope | None = None
        #: Set by a lane whose workers only look for their next task where the input
        #: ends (the io lane's list path): `stop` calls it to end the input there.
        self.halt: Callable[[], None] | None = None
        #: ``limiter=``/``rate=``/``retry=`` of the call (see ``_control``), or None.
        self.controls = controls
        #: The lane asks for `n` tasks in flight at once: an iterator batch widens its
        #: window (its bound on tasks pulled ahead of the consumer) up to `n`, capped.
        #: The cpu lane asks it of a pool that wants thousands of tiny tasks queued.
        self.widen: Callable[[int], None] = _no_widen
        #: Set by a lane that waits on something other than the source (an inbox):
        #: the controls call it when a task becomes ready to pull.
        self.wake: Callable[[], None] | None = None
        #: ``run_all``'s outcomes by index, when its lane stores successes itself (a
        #: lane with ``fills_results = True``, the io lane: ``results[index] = value``
        #: inline costs less than any call). Such a lane grows the list by the tasks it
        #: pulls, stores each success in place and adds how many it stored to
        #: ``filled``; everything else still goes through ``emit``.
        self.results: list[Any] | None = None
        self.filled = 0
        #: Whether anyone looks at outcomes before the batch is over (an iterator's
        #: consumer, a progress bar). ``run_all`` without progress does not: a lane
        #: that pays per hand-over (a Dask cluster's fetches) may then hand its
        #: successes over in fewer, larger lots. Failures still come at once.
        self.streams = True
        #: Not None: the source's tasks are the items of ``amap(map_fn, items)``, each
        #: meaning ``map_fn(item)``. Only a lane with ``maps_items = True`` (the cpu
        #: lane on its own pool) is given such a batch: it then builds no task per item.
        self.map_fn: Callable[[Any], Any] | None = None

    def _emit_ok_one(self, index: int, value: Any) -> None:
        self.emit(index, True, value)

    def _emit_ok_each(self, indexes: Sequence[int], values: list[Any]) -> None:
        emit = self.emit
        for index, value in zip(indexes, values, strict=True):
            emit(index, True, value)

    def fail(self, exc: BaseException) -> None:
        """Stop the batch and raise ``exc`` from ``run_batch`` once it has stopped."""
        if self.error is None:
            self.error = exc
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        if self.halt is not None:
            self.halt()
        if self.scope is not None:
            self.scope.cancel()


def _no_widen(n: int) -> None:
    """`run_all` has no window to widen: a lane pulls what it has room for."""


#: The most an iterator batch lets its window grow to when the lane asks (`widen`):
#: tasks pulled ahead of the consumer, and outcomes buffered for it.
MAX_WINDOW = 8192
_ANY = 1 << 62  # as many as asked for
#: In `_Stream.reorder`, in place of `ok`: the value is a list, the outcomes of
#: consecutive successful tasks from that index on.
_BLOCK: Any = object()


async def run_batch(lane: Lane, batch: Batch) -> None:
    """Run ``batch`` on ``lane``; raise the batch's failure, if any, after cleanup.

    The batch's cancel scope is asyncio's own (`TaskScope`) for a lane that runs on
    asyncio's primitives alone (``native_asyncio``: the io lane, without controls),
    so that such a batch never loads anyio's asyncio backend; anyio's otherwise.
    """
    scope: Any
    if (
        batch.controls is None
        and getattr(lane, "native_asyncio", False)
        and batch.loop.backend == "asyncio"
    ):
        from ._backend import TaskScope

        scope = TaskScope()
    else:
        import anyio

        scope = anyio.CancelScope()
    try:
        with scope:
            batch.scope = scope
            if batch.stopping:  # failed before it started (e.g. by its input)
                scope.cancel()
            if batch.controls is None:
                await lane.run(batch)
            else:
                await batch.controls.run(lane, batch)
    finally:
        _end(batch)
    if batch.error is not None:
        raise batch.error


def run_batch_blocking(lane: Lane, batch: Batch) -> None:
    """`run_batch` without an event loop, for a lane that can wait in the calling
    thread (``lane.run_blocking``: the cpu lane on its process pool)."""
    try:
        lane.run_blocking(batch)  # type: ignore[attr-defined]
    finally:
        _end(batch)
    if batch.error is not None:
        raise batch.error


def _end(batch: Batch) -> None:
    batch.stopping = True
    batch.source.close()
    if batch.progress is not None:
        batch.progress.close()


def annotate(exc: BaseException, index: int) -> BaseException:
    """Name the task in the traceback, once, without changing the exception's type."""
    note = f"(tasklanes: raised by task {index} of the batch)"
    notes = getattr(exc, "__notes__", ())
    if note not in notes:
        exc.add_note(note)
    return exc


async def collect(
    lane: Lane,
    tasks: Iterable[Any] | AsyncIterable[Any],
    limit: int,
    timeout: float | None,
    return_exceptions: bool,
    progress: Progress | None,
    controls: Controls | None = None,
) -> list[Any]:
    """``run_all``: every outcome, in input order."""
    from ._backend import LoopHandle

    if progress is None and getattr(lane, "fills_results", False):
        if controls is None:
            source = Source(tasks, lane.check_task)
            return await _collect_filled(lane, source, limit, timeout, return_exceptions)
        if controls.retry is not None and controls.fixed == () and isinstance(tasks, (list, tuple)):
            # retry= alone on a list: first attempts keep their indexes, and the lane
            # stores successes in place as without it (`ControlledSource.filled_by`).
            source = Source(tasks, controls.check(lane.check_task))
            return await _collect_filled(lane, source, limit, timeout, return_exceptions, controls)
    batch, source, store, runs = _collecting(
        lane, tasks, limit, timeout, return_exceptions, progress, controls, LoopHandle()
    )
    await run_batch(lane, batch)
    return _in_order(source, store, runs)


def collect_blocking(
    lane: Lane,
    tasks: list[Any] | tuple[Any, ...],
    limit: int,
    timeout: float | None,
    return_exceptions: bool,
) -> list[Any]:
    """`collect` in the calling thread, without an event loop: ``run_all_sync`` on the
    cpu lane's process pool for a list of tasks (no progress, limiter, rate or retry).
    The same batch, outcomes and errors; only the waiting differs (``lane.run_blocking``)."""
    batch, source, store, runs = _collecting(
        lane, tasks, limit, timeout, return_exceptions, None, None, None
    )
    run_batch_blocking(lane, batch)
    return _in_order(source, store, runs)


def _collecting(
    lane: Lane,
    tasks: Iterable[Any] | AsyncIterable[Any],
    limit: int,
    timeout: float | None,
    return_exceptions: bool,
    progress: Progress | None,
    controls: Controls | None,
    loop: LoopHandle | None,
) -> tuple[Batch, Source, dict[int, Any], list[tuple[int, list[Any]]]]:
    """A batch whose outcomes land in a dict by index (``collect``'s), its source (the
    controls may put another in front of it in the batch), that dict, and the blocks
    of consecutive successes handed over in bulk."""
    check = lane.check_task if controls is None else controls.check(lane.check_task)
    source = Source(tasks, check)
    if progress is not None:
        progress.start(source.size)
    # Outcomes land in a dict by index, whatever the order and whether the input's
    # length is known; the list is built once at the end. A success without a
    # progress bar is then one C-level store (``store.__setitem__``), which is most
    # of what a trivial io task costs beyond its own await.
    store: dict[int, Any] = {}

    def emit(index: int, ok: bool, value: Any) -> None:
        if not ok:
            annotate(value, index)
            if not return_exceptions:
                batch.fail(value)
                return
        store[index] = value
        if progress is not None:
            progress.advance(ok)

    # Consecutive successes handed over as one block (`emit_ok_many` with a `range`),
    # kept as they came and copied into the result with one slice assignment each.
    runs: list[tuple[int, list[Any]]] = []

    def emit_ok_many(indexes: Sequence[int], values: list[Any]) -> None:
        # The bulk path (the cpu lane hands over thousands of tiny results at once):
        # the stores run in C, not one Python call per result.
        if progress is not None:
            for index, value in zip(indexes, values, strict=True):
                emit(index, True, value)
            return
        if type(indexes) is range and indexes.step == 1 and len(indexes) == len(values):
            runs.append((indexes.start, values))
            return
        store.update(zip(indexes, values, strict=True))

    emit_ok = store.__setitem__ if progress is None else None
    batch = Batch(
        source, limit, timeout, emit, loop, progress, emit_ok_many, emit_ok, controls
    )
    batch.streams = progress is not None
    return batch, source, store, runs


def _in_order(
    source: Source, store: dict[int, Any], runs: list[tuple[int, list[Any]]]
) -> list[Any]:
    pulled = source.pulled
    got = len(store) + sum(len(values) for _, values in runs)
    if got != pulled:  # pragma: no cover - a bug in a lane, never silent
        raise RuntimeError(f"tasklanes lost results: {pulled} tasks started, {got} outcomes")
    if not runs:
        return list(map(store.__getitem__, range(pulled)))
    results: list[Any] = [None] * pulled
    for first, values in runs:
        results[first : first + len(values)] = values
    for index, value in store.items():
        results[index] = value
    return results


async def _collect_filled(
    lane: Lane,
    source: Source,
    limit: int,
    timeout: float | None,
    return_exceptions: bool,
    controls: Controls | None = None,
) -> list[Any]:
    """``run_all`` on a lane that stores successes in ``batch.results`` itself (the
    io lane, without progress, and without controls or with ``retry=`` alone on a
    list): the list it fills is the answer, with no dict and no copy. Failures, and
    anything a lane hands to ``emit``, land in it too."""
    from ._backend import LoopHandle

    results: list[Any] = []
    emitted = 0

    def emit(index: int, ok: bool, value: Any) -> None:
        nonlocal emitted
        if not ok:
            annotate(value, index)
            if not return_exceptions:
                batch.fail(value)
                return
        results[index] = value
        emitted += 1

    batch = Batch(source, limit, timeout, emit, LoopHandle(), controls=controls)
    batch.results = results
    await run_batch(lane, batch)
    if controls is not None:  # retried successes stored under later lane indexes
        batch.source.move_filled(results)  # type: ignore[attr-defined]
    pulled = source.pulled
    if len(results) != pulled or batch.filled + emitted != pulled:  # pragma: no cover
        raise RuntimeError(  # a bug in a lane, never silent
            f"tasklanes lost results: {pulled} tasks started, "
            f"{batch.filled + emitted} outcomes"
        )
    return results


class _Stream:
    """The state of an iterator batch, shared by its background task and its consumer.

    Kept apart from `BatchIterator` on purpose: the background task holds this
    object, never the iterator, so dropping the iterator (``break``) really drops it
    and its ``__del__`` can stop the batch.
    """

    def __init__(
        self,
        lane: Lane,
        source: Source,
        limit: int,
        timeout: float | None,
        return_exceptions: bool,
        ordered: bool,
        progress: Progress | None,
        controls: Controls | None = None,
        bare: bool = False,
    ) -> None:
        self.lane = lane
        self.controls = controls
        self.source = source
        self.limit = limit
        self.timeout = timeout
        self.return_exceptions = return_exceptions
        self.ordered = ordered
        self.progress = progress
        #: What the consumer takes next: ``(index, ok, value)`` each, or with `bare`
        #: (``amap``, whose loop yields values only) the values alone, which a block of
        #: successes extends in one C-level step, without a tuple per result.
        self.bare = bare
        self.ready: deque[Any] = deque()
        self.reorder: dict[int, tuple[Any, Any]] = {}  # index -> (ok or _BLOCK, value)
        self.next_index = 0  # ordered: the next index to hand out
        self.window = max(2 * limit, 16)
        self.event: anyio.Event | None = None
        self.finished: anyio.Event | None = None
        self.batch: Batch | None = None
        self.outcome: BaseException | None = None
        self.done = False
        self.map_fn: Callable[[Any], Any] | None = None  # see `Batch.map_fn`

    def start(self) -> None:
        import anyio

        from ._backend import LoopHandle

        loop = LoopHandle()
        self.event = anyio.Event()
        self.finished = anyio.Event()
        source = self.source
        if self.ordered:
            # Bound both the reorder buffer and the distance from the oldest result the
            # loop still waits for: a slow first task must not let the rest run away.
            source.set_gate(
                lambda index: (
                    len(self.ready) + len(self.reorder) < self.window
                    and index < self.next_index + self.window
                ),
                lambda index: (
                    self.next_index + self.window - index
                    if len(self.ready) + len(self.reorder) < self.window
                    else 0
                ),
            )
        else:
            source.set_gate(
                lambda index: len(self.ready) < self.window,
                lambda index: _ANY if len(self.ready) < self.window else 0,
            )
        if self.progress is not None:
            self.progress.start(source.size)
        self.batch = Batch(
            source, self.limit, self.timeout, self.emit, loop, self.progress,
            self.emit_ok_many, controls=self.controls,
        )  # fmt: skip
        self.batch.widen = self.widen
        self.batch.map_fn = self.map_fn
        loop.spawn_background(self.run)

    def widen(self, n: int) -> None:
        """The lane wants `n` tasks in flight (see `Batch.widen`): let the window grow
        to that, at most `MAX_WINDOW`. It never shrinks back during the batch."""
        if n > self.window and self.window < MAX_WINDOW:
            self.window = min(n, MAX_WINDOW)
            self.release()

    def emit_ok_many(self, indexes: Sequence[int], values: list[Any]) -> None:
        """Many successes at once. Consecutive ones (a `range`) go into the ready
        buffer in one step when they are next in order, else wait in the reorder
        buffer as one block."""
        if self.progress is None and type(indexes) is range and len(indexes) == len(values):
            first = indexes.start
            if not self.ordered:
                self.ready.extend(values if self.bare else zip(indexes, repeat(True), values))
            elif first == self.next_index:
                self.ready.extend(values if self.bare else zip(indexes, repeat(True), values))
                self.next_index += len(values)
                self._drain()
            else:
                self.reorder[first] = (_BLOCK, values)
                return  # nothing new for the consumer yet
            self.wake()
            return
        for index, value in zip(indexes, values, strict=True):
            self.emit(index, True, value)

    def _drain(self) -> None:
        """Ordered: move what is next in order from the reorder buffer to `ready`."""
        reorder = self.reorder
        while self.next_index in reorder:
            first = self.next_index
            ok, value = reorder.pop(first)
            if ok is _BLOCK:
                if self.bare:
                    self.ready.extend(value)
                else:
                    self.ready.extend(zip(range(first, first + len(value)), repeat(True), value))
                self.next_index = first + len(value)
            else:
                self.ready.append(value if self.bare else (first, ok, value))
                self.next_index = first + 1

    async def run(self) -> None:
        import anyio

        assert self.batch is not None and self.finished is not None
        try:
            await run_batch(self.lane, self.batch)
        except BaseException as exc:
            self.outcome = exc
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise  # the loop itself is shutting down
        finally:
            self.done = True
            self.wake()
            self.finished.set()

    def emit(self, index: int, ok: bool, value: Any) -> None:
        if not ok:
            annotate(value, index)
            if not self.return_exceptions:
                assert self.batch is not None
                # Outcomes already buffered are still handed out; then this raises.
                self.batch.fail(value)
                return
        if self.progress is not None:
            self.progress.advance(ok)
        if self.ordered:
            self.reorder[index] = (ok, value)
            self._drain()
        else:
            self.ready.append(value if self.bare else (index, ok, value))
        self.wake()

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()

    def release(self) -> None:
        """The consumer took an outcome: the gate may let more in. Through the batch's
        source, which the controls (``limiter=``, ...) may have put in front of ours."""
        (self.source if self.batch is None else self.batch.source).release()

    def stop(self) -> None:
        if self.batch is not None:
            self.batch.stop()
        self.release()


class _ItemsPass:
    """The check of an ``amap`` item on a lane that maps items itself: none (the
    function was checked once; an item that does not pickle fails alone, later).
    ``check_many`` too, so a bulk pull skips even the call per item."""

    def __call__(self, task: object, index: int) -> None:
        pass

    def check_many(self, tasks: Sequence[Any], start: int) -> None:
        pass


_ITEMS_PASS = _ItemsPass()


class BatchIterator(Generic[T_co]):
    """The ``async for`` side of ``as_completed`` and ``amap``.

    An ``async for`` loop cannot own a task group across its iterations, so the batch
    runs in a background task and hands outcomes over through a small buffer. The
    buffer is bounded: when the loop body is slower than the tasks, the batch stops
    pulling new tasks until the loop catches up, so memory stays O(limit).

    Leaving an ``async with`` block over it, however it is left, stops the batch
    and waits for its cleanup (``__aexit__`` is ``aclose()``). Without the block, an
    exception or cancellation that reaches ``__anext__`` stops the batch and waits
    for the cleanup, and so does ``aclose()``; a collected iterator cancels its
    batch at once, which cleans up in the background. A ``break`` (or an exception
    in the loop body) tells the iterator nothing: while it is referenced the batch
    runs on.
    """

    def __init__(
        self,
        lane: Lane,
        tasks: Iterable[Any] | AsyncIterable[Any],
        limit: int,
        timeout: float | None,
        return_exceptions: bool,
        *,
        ordered: bool,
        with_index: bool,
        progress: Progress | None = None,
        controls: Controls | None = None,
        map_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if map_fn is not None:
            # `amap` on a lane that maps items itself: `tasks` are the items, and
            # `map_fn` was checked already (an item's pickling fails it alone).
            assert controls is None and getattr(lane, "maps_items", False)
            check: Callable[[object, int], None] = _ITEMS_PASS
        else:
            check = lane.check_task if controls is None else controls.check(lane.check_task)
        source = Source(tasks, check)  # checks a list before anything runs
        self._stream = _Stream(
            lane, source, limit, timeout, return_exceptions, ordered, progress, controls,
            bare=not with_index,
        )
        self._stream.map_fn = map_fn
        self._with_index = with_index
        self._closed = False

    def __aiter__(self) -> BatchIterator[T_co]:
        return self

    async def __aenter__(self) -> BatchIterator[T_co]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> T_co:
        stream = self._stream
        if stream.ready and not self._closed:
            # The common case of a busy loop, kept to a minimum (it runs per result):
            # an outcome is buffered already. (`ready` fills only once the batch has
            # started, so `stream.batch` is set.)
            item = stream.ready.popleft()
            stream.batch.source.release()  # type: ignore[union-attr]
            if self._with_index:
                return (item[0], item[2])  # type: ignore[return-value]
            return item  # type: ignore[no-any-return]
        return await self._wait_next()

    async def _wait_next(self) -> T_co:
        """`__anext__` when nothing is buffered: start the batch, or wait for it."""
        import anyio  # loaded by now (the caller runs a loop): a dictionary look-up

        stream = self._stream
        if self._closed:
            raise StopAsyncIteration
        if stream.batch is None:
            stream.start()
        try:
            while not stream.ready:
                if stream.done:
                    self._closed = True
                    outcome = stream.outcome
                    if outcome is not None and not isinstance(
                        outcome, anyio.get_cancelled_exc_class()
                    ):
                        raise outcome
                    raise StopAsyncIteration
                assert stream.event is not None
                await stream.event.wait()
                stream.event = anyio.Event()
        except BaseException:
            if not stream.done:
                # Our caller was cancelled while waiting: stop the batch and wait for
                # its cleanup, so none of its work outlives this loop.
                with anyio.CancelScope(shield=True):
                    await self.aclose()
            raise
        item = stream.ready.popleft()
        stream.release()
        if self._with_index:
            return (item[0], item[2])  # type: ignore[return-value]
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop the batch and wait until its work has stopped."""
        import anyio

        self._closed = True
        stream = self._stream
        if stream.batch is not None and stream.finished is not None:
            stream.stop()
            with anyio.CancelScope(shield=True):
                await stream.finished.wait()
        else:
            stream.source.close()

    def __del__(self) -> None:
        # ``break`` drops the iterator without awaiting anything: cancel the batch now
        # (on its loop, whichever thread the garbage collector runs in).
        stream = getattr(self, "_stream", None)
        if stream is None:
            return  # the constructor raised (bad input): nothing ever started
        batch = stream.batch
        if batch is not None and not stream.done:
            batch.stopping = True
            batch.loop.call_soon_threadsafe(stream.stop)
        elif batch is None:
            stream.source.close()
