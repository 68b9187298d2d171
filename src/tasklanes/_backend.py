"""The little that tasklanes needs to know about the running event loop.

anyio hides the difference between asyncio and trio for almost everything; what it
does not offer cheaply is handing a callback to a loop from a foreign thread, a
clock that costs one C call, and a task that outlives the caller's task group. This
module is that shim, in anyio's style: one function per need, a branch per backend.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

# anyio is imported where it is used: an io batch on asyncio runs on asyncio's own
# primitives (`TaskScope`, `helper_group`, ``LoopHandle.event``/``sleep``) and never
# loads it, nor anyio's asyncio backend (~25 ms of sockets and streams modules a
# one-shot script would pay for nothing).

T = TypeVar("T")

__all__ = [
    "LoopHandle",
    "TaskScope",
    "current_backend",
    "helper_group",
    "run_in_fresh_thread",
    "run_sync",
    "worker_group",
]


def current_backend() -> str:
    """``"trio"`` or ``"asyncio"`` (uvloop counts as asyncio); raise outside a loop."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "this tasklanes call must run inside an event loop (asyncio or trio); "
            "from synchronous code use run_all_sync()"
        ) from None
    return "asyncio"


class LoopHandle:
    """The running loop, seen from the three angles tasklanes needs.

    ``key`` identifies the loop (io capacity is per loop), ``clock`` reads the loop's
    monotonic clock, ``call_soon_threadsafe`` runs a callback on the loop from any
    thread (a no-op once the loop has closed: nobody is left to tell). ``event()``
    makes an event and ``sleep(seconds)`` sleeps, the loop's own on asyncio (anyio's
    would load its asyncio backend) and anyio's on trio.
    """

    __slots__ = ("_spawn", "backend", "call_soon_threadsafe", "clock", "event", "key", "sleep")

    def __init__(self) -> None:
        self.backend = current_backend()
        if self.backend == "trio":
            import trio

            token = trio.lowlevel.current_trio_token()
            self.key: object = token

            def call_soon_threadsafe(fn: Callable[[], object]) -> None:
                try:
                    token.run_sync_soon(fn)
                except trio.RunFinishedError:
                    pass

            def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
                trio.lowlevel.spawn_system_task(fn)

            import anyio

            self.event: Callable[[], Any] = anyio.Event
            self.sleep: Callable[[float], Coroutine[Any, Any, None]] = anyio.sleep

        else:
            loop = asyncio.get_running_loop()
            self.key = loop

            def call_soon_threadsafe(fn: Callable[[], object]) -> None:
                try:
                    loop.call_soon_threadsafe(fn)
                except RuntimeError:  # the loop is closed
                    pass

            def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
                task = loop.create_task(fn())
                # asyncio keeps only weak references to tasks: hold it until it ends.
                _background.add(task)
                task.add_done_callback(_background.discard)

            self.event = asyncio.Event
            self.sleep = asyncio.sleep

        # Deadlines are only ever compared with each other and slept on relatively,
        # so one process-wide monotonic clock serves every loop and every thread,
        # and costs one C call (``loop.time`` is a Python method; uvloop's is coarse).
        self.clock: Callable[[], float] = time.monotonic
        if self.backend == "trio":
            # trio's own clock, so that a test on trio's MockClock sees deadlines move
            # with the loop's (virtual) time; its sleeps are measured on it anyway.
            self.clock = trio.current_time
        self.call_soon_threadsafe = call_soon_threadsafe
        self._spawn = spawn

    def spawn_background(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``fn()`` as a task that no task group owns.

        Used only by the iterator APIs (``as_completed``, ``amap``): an ``async for``
        loop cannot own a task group across its ``yield`` points, so the batch runs
        beside it and the iterator stops it when the loop is left. ``fn`` must not
        raise: it hands every outcome to its consumer.
        """
        self._spawn(fn)


_background: set[asyncio.Task[None]] = set()


@asynccontextmanager
async def worker_group(
    backend: str,
) -> AsyncIterator[Callable[[Callable[[], Coroutine[Any, Any, None]]], None]]:
    """A task group with the cheapest ``spawn`` the backend has.

    The io lane starts up to ``limit`` workers per batch, and anyio's ``start_soon``
    costs ~35 us a task here against ~7 us for ``asyncio.TaskGroup.create_task``:
    for a batch of 1000 short coroutines that difference is the whole overhead.
    The native groups keep the same structure: a cancelled host cancels the
    children and waits for them. Workers must not raise (they report outcomes),
    so the native ``ExceptionGroup`` wrapping never shows.
    """
    if backend == "trio":
        import trio

        async with trio.open_nursery() as nursery:

            def spawn_trio(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
                nursery.start_soon(fn)

            yield spawn_trio
    else:
        async with asyncio.TaskGroup() as tg:

            def spawn_asyncio(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
                tg.create_task(fn())

            yield spawn_asyncio


@asynccontextmanager
async def helper_group(
    backend: str,
) -> AsyncIterator[Callable[..., None]]:
    """A task group for a batch's helpers (its watchdog, the loop-lag sampler): they
    run until the block ends, then are cancelled, and the block waits for them.

    On asyncio a native ``TaskGroup`` (anyio's would load its asyncio backend); the
    helpers are cancelled one by one, as a cancel scope around them would be.
    """
    if backend == "trio":
        import anyio

        async with anyio.create_task_group() as group:

            def start_trio(fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
                group.start_soon(fn, *args)

            yield start_trio
            group.cancel_scope.cancel()
        return
    started: list[asyncio.Task[Any]] = []
    async with asyncio.TaskGroup() as tg:

        def start(fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
            started.append(tg.create_task(fn(*args)))

        try:
            yield start
        finally:
            for task in started:
                task.cancel()


class TaskScope:
    """A cancel scope for asyncio made of the host task's own ``cancel``/``uncancel``,
    as ``asyncio.timeout`` is, without a deadline: ``cancel()`` stops what the host
    task awaits inside the ``with`` block, and the block swallows that cancellation
    only, never one that someone else asked for meanwhile (``uncancel`` counts them).

    It stands in for ``anyio.CancelScope`` around an io batch on asyncio, which would
    load anyio's asyncio backend. What it lacks: shielding (nothing in an io batch
    without controls shields), and re-delivery (anyio cancels again at each await of
    a task that swallowed the cancellation; here the host awaits only tasklanes' own
    code, which lets it through, and the workers are cancelled by their task group).
    It is cancelled from the loop's thread only. The host task is never cancelled
    from inside itself: a `cancel()` from the host (a failure noticed while it pulls
    tasks) is delivered from a callback, at the host's next ``await``, if the block
    has not ended by then.
    """

    __slots__ = ("_active", "_baseline", "_called", "_delivered", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self._baseline = 0
        self._active = False
        self._called = False
        self._delivered = False

    def __enter__(self) -> TaskScope:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._baseline = task.cancelling()
        self._active = True
        if self._called:
            self._deliver()
        return self

    def cancel(self) -> None:
        if self._called:
            return
        self._called = True
        if self._active:
            self._deliver()

    def _deliver(self) -> None:
        task = self._task
        if not self._active or self._delivered or task is None:
            return
        if task is asyncio.current_task():
            # From the host itself: a cancel() now would be raised at whatever it
            # awaits next, maybe after the block. Deliver it once it has yielded.
            asyncio.get_running_loop().call_soon(self._deliver)
            return
        self._delivered = True
        task.cancel("tasklanes: the batch stopped")

    def __exit__(self, et: type[BaseException] | None, exc: object, tb: object) -> bool:
        self._active = False
        if self._delivered:
            assert self._task is not None
            if self._task.uncancel() <= self._baseline and et is not None:
                return issubclass(et, asyncio.CancelledError)
        return False


def in_event_loop() -> bool:
    try:
        current_backend()
    except RuntimeError:
        return False
    return True


def run_sync(async_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run ``async_fn(*args)`` on a new event loop, from sync code.

    Raises ``RuntimeError`` inside a running event loop: blocking it to run another
    one would freeze every task of the first.
    """
    if in_event_loop():
        raise RuntimeError(
            "run_all_sync() cannot be called from inside a running event loop, and a "
            "Jupyter/IPython notebook cell (like any async function) runs inside one: "
            "write 'await run_all(...)' with the same arguments instead "
            "('await scheduler.run_all(...)' on a Scheduler)"
        )
    # The value comes back through a list, not as the main task's result: on 3.11,
    # asyncio's runner may build a message holding the main task (and so a repr of
    # its result) when it restores the Ctrl-C handler, which costs seconds for a big
    # result.
    box: list[T] = []

    async def main() -> None:
        box.append(await async_fn(*args))

    import anyio

    anyio.run(main)
    return box[0]


async def run_in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread and await it without blocking the loop.

    For rare, slow housekeeping (closing a Scheduler joins threads and processes);
    a fresh thread is joined before returning, so nothing is left behind.

    Cancellation: shielded. ``fn`` cannot be stopped from outside, and returning
    before it ends would leave its thread behind.
    """
    import anyio

    from ._inbox import Inbox

    inbox = Inbox(LoopHandle())
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))
        inbox.put(None)

    thread = threading.Thread(target=target, name="tasklanes-close", daemon=True)
    thread.start()
    with anyio.CancelScope(shield=True):
        await inbox.get()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result
