"""What every lane shares: its lifecycle, the batches it runs, the pull loop, outcome
classification and one deadline heap per batch.

A lane (`_io.py`, `_threads.py`, `_cpu.py`, `_executor.py`) knows how to *run* a
task; everything around that is written once, here:

- [`LaneBase`][]: the lane's phase ([`LaneState`][]) and the set of batches it runs.
  `open_run` registers a batch and refuses it once the lane is closed, *before*
  anything starts (so an `amap` made before `Scheduler.close()` and iterated after
  starts no thread and no process); `resource` builds the lane's pool lazily and
  never after `close()`.
- [`pull`][]: the one "take the next tasks" loop, with the rule every lane needs: never
  wait for an iterator's gate while outcomes are owed (those outcomes are what opens it).
- [`classify`][] / [`count`][]: outcome -> counter, for `completed`, `failed`,
  `timed_out`, `cancelled` and `crashed`.
- [`Deadlines`][] and [`watch`][]: one heap of deadlines per batch (as trio's
  `Deadlines`); the watchdog sleeps until the next deadline instead of scanning every
  running task on each wake-up.

The path of one task through a lane, and where `limiter=`, `rate=` and `retry=`
(`tasklanes._control`) plug in:

1. **pull** (`pull`, or the io lane's bulk refill): the task leaves the input.
2. **admission**: with controls, `batch.source` is a `ControlledSource` that hands
   out only tasks holding their limiters. Waiting for one takes one of the call's
   `limit` slots but no lane capacity: a small task on the loop waits, no thread,
   no worker process; an io worker whose next task would wait gives its io capacity
   slot back (`_IoBatch._take_nowait`). The lane numbers what it pulls
   consecutively (*lane indexes*); the controls translate each outcome back to
   the task's index in the input.
3. **run**: the lane's own business (a coroutine on the loop, a thread, a process).
4. **deadline**: with a `timeout`, the task's deadline enters the batch's
   `Deadlines`; the watchdog reports `TaskTimeout` when it passes.
5. **outcome**: `classify` -> the tally, and `batch.emit` to the caller.
   **retry**: a failed outcome whose error a `Retry` accepts goes back to step 2
   (after its backoff) instead of to the caller, under its own index in the input,
   so results keep input order.
6. **really over**: the moment the task stops holding anything, when its limiters
   are released. For io and a successful task this is step 5; a blocking task
   releases when its thread's call returns (even after a timeout was reported); a
   cpu task killed for a timeout when the pool has reaped its worker (`on_gone` of
   the job, from the pool's reaper).
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import TaskTimeout, WorkerCrashed, closed_error
from .._stats import LaneStats, Tally
from .._tasks import END

if TYPE_CHECKING:
    from .._batch import Batch

__all__ = [
    "Deadlines",
    "LaneBase",
    "LaneState",
    "Outcome",
    "classify",
    "count",
    "log",
    "pull",
    "watch",
]

log = logging.getLogger("tasklanes.lanes")

INF = math.inf
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class LaneState(enum.Enum):
    """A lane's phase. It only moves forward: `OPEN` -> `CLOSED`."""

    OPEN = "open"
    CLOSED = "closed"


class LaneBase:
    """The lifecycle and registry of a lane; the lane classes derive from it.

    Example (what a lane's `run` looks like):

    ```python
    async def run(self, batch):
        runner = _MyBatch(self, batch)
        self.open_run(runner)          # RuntimeError if closed: nothing started
        try:
            await runner.run()
        finally:
            self.close_run(runner)
    ```
    """

    kind: str
    capacity: int
    stats: LaneStats

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = LaneState.OPEN
        self._runs: set[Any] = set()
        self._resource: Any = None

    @property
    def state(self) -> LaneState:
        return self._state

    def open_run(self, run: object) -> None:
        """Register a batch's runner; refuse it (`RuntimeError`) once the lane is closed."""
        with self._lock:
            if self._state is LaneState.CLOSED:
                raise closed_error()
            self._runs.add(run)

    def close_run(self, run: object) -> None:
        with self._lock:
            self._runs.discard(run)

    def runs(self) -> list[Any]:
        """The batches running now (a copy, safe to iterate without the lock)."""
        with self._lock:
            return list(self._runs)

    def resource(self, make: Callable[[], R]) -> R:
        """The lane's pool, made by `make()` on first use; never made after `close()`."""
        pool = self._resource
        if pool is not None:
            return pool  # type: ignore[no-any-return]
        with self._lock:
            if self._state is LaneState.CLOSED:
                raise closed_error()
            if self._resource is None:
                self._resource = make()
            return self._resource  # type: ignore[no-any-return]

    def close(self) -> None:
        """Refuse new batches, then let the lane stop what runs (`shutdown`). Idempotent."""
        with self._lock:
            if self._state is LaneState.CLOSED:
                return
            self._state = LaneState.CLOSED
            runs = list(self._runs)
            resource, self._resource = self._resource, None
        self.shutdown(runs, resource)

    def shutdown(self, runs: list[Any], resource: Any) -> None:
        """Stop `runs` (the batches still running) and `resource` (the pool, or None)."""


class Outcome(enum.Enum):
    """What became of one task: each is one counter of `Scheduler.stats()`."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    CRASHED = "crashed"


def classify(ok: bool, value: object) -> Outcome:
    """The counter a task's outcome goes to (`ok`: it returned `value`)."""
    if ok:
        return Outcome.COMPLETED
    if isinstance(value, TaskTimeout):
        return Outcome.TIMED_OUT
    if isinstance(value, WorkerCrashed):
        return Outcome.CRASHED
    return Outcome.FAILED


def count(tally: Tally, outcome: Outcome, n: int = 1) -> None:
    """Add `n` tasks of `outcome` to `tally`."""
    name = outcome.value
    setattr(tally, name, getattr(tally, name) + n)


async def pull(batch: Batch, want: int, owed: bool = False) -> tuple[int, list[Any]]:
    """Up to `want` tasks from `batch.source` as `(first index, tasks)` (their indexes
    are consecutive); at least one unless the input has ended or the batch stops.

    Waits (for an async iterator, or for an iterator's gate) only when nothing was
    pulled yet, and never for the gate while `owed` (outcomes are owed to the caller
    and only handed over once this returns: an ordered `amap` waits for its oldest
    result before it lets more in). An input that raises fails the batch. One caller
    pulls from a batch's source at a time.

    Cancellation: waiting for the input is cancelled with the batch; only a pull
    that has taken nothing waits, so no pulled task is lost to a cancellation.
    """
    source = batch.source
    added: list[Any] = []
    try:
        while len(added) < want and not batch.stopping:
            got = source.take(want - len(added))
            if got:
                if added:
                    added.extend(got)
                else:
                    added = got
                continue
            if source.exhausted or added or (owed and source.blocked()):
                break
            item = await source.next()
            if item is END:
                break
            added.append(item[1])
    except Exception as exc:
        batch.fail(exc)
    return source.pulled - len(added), added


class Deadlines(Generic[K]):
    """The deadlines of one batch's running tasks, soonest first (a heap, as trio's).

    `add(deadline, key)` when a task starts, `remove(key)` when it ends; `expired(now)`
    pops the keys whose deadline has passed. Removal is lazy: a removed or replaced
    entry stays in the heap until it reaches the top (or the heap is rebuilt, when
    stale entries outnumber live ones), so every operation is O(log n).

    Example:

    ```python
    deadlines = Deadlines()
    deadlines.add(clock() + timeout, worker)
    ...
    for worker in deadlines.expired(clock()):
        worker.scope.cancel()
    ```
    """

    __slots__ = ("_heap", "_live", "_room")

    def __init__(self) -> None:
        # (deadline, id(key), key): the id breaks ties without comparing keys.
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}
        self._room = 64  # heap size that triggers dropping the stale entries

    def __len__(self) -> int:
        return len(self._live)

    def add(self, deadline: float, key: K) -> None:
        self._live[key] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, id(key), key))
        if len(heap) > self._room:
            self._rebuild()

    def remove(self, key: K) -> None:
        self._live.pop(key, None)

    def _rebuild(self) -> None:
        self._heap = [(d, id(k), k) for k, d in self._live.items()]
        heapq.heapify(self._heap)
        self._room = 2 * len(self._heap) + 64

    def next_deadline(self) -> float:
        """The soonest live deadline, or `inf`."""
        heap = self._heap
        live = self._live
        while heap:
            deadline, _, key = heap[0]
            if live.get(key) == deadline:
                return deadline
            heapq.heappop(heap)
        return INF

    def expired(self, now: float) -> list[K]:
        """Pop and return the keys whose deadline is `<= now`, soonest first."""
        heap = self._heap
        live = self._live
        out: list[K] = []
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if live.get(key) == deadline:
                del live[key]
                out.append(key)
        return out


async def watch(
    deadlines: Deadlines[K],
    on_expired: Callable[[K], None],
    clock: Callable[[], float],
    longest: float,
    before: Callable[[], None] | None = None,
) -> None:
    """The watchdog: call `on_expired(key)` for each deadline as it passes.

    It sleeps until the soonest deadline, or `longest` seconds at most: a batch's
    deadlines are its tasks' starts plus one `timeout`, so a deadline added while it
    sleeps is at least `longest` (= `timeout`) away and never needs an earlier wake-up.
    `before()` runs at each wake-up (the blocking lane moves the starts its threads
    reported into `deadlines` there). Runs until cancelled.
    """
    import anyio  # not at the top: the cpu lane's sync path runs without it

    while True:
        if before is not None:
            before()
        now = clock()
        for key in deadlines.expired(now):
            on_expired(key)
        soonest = min(deadlines.next_deadline(), now + longest)
        await anyio.sleep(max(soonest - now, 0.0))
