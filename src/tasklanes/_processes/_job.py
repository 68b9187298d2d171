"""A job: one batch of tasks submitted to the pool.

Two halves, as two threads use them: [PoolJob][tasklanes._processes._job.PoolJob] is
the caller's handle (put, close_input, cancel, counters) and
[JobCore][tasklanes._processes._job.JobCore] the manager's books (what is queued,
running, delivered; the measured task duration). The only structure both touch is the
queue of tasks put, a `deque` (atomic appends and pops), and it is extended under the
pool's door lock so that a put never races the pool's shutdown.

The queue holds *segments* ([Segment][tasklanes._processes._job.Segment]): runs of
tasks with consecutive indexes, as they were put, and chunks are sliced from them, so
that a task costs no `(index, task)` pair anywhere in the pool. For the same reason a
job opened with `runs=True` gets the successes workers send in bulk as
[Run][tasklanes._processes._job.Run] blocks, `(first index, values)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from .._errors import closed_error

if TYPE_CHECKING:
    from ._manager import Manager

__all__ = [
    "MAX_CHUNK",
    "PIPELINE_DEPTH",
    "TARGET_CHUNK_SECONDS",
    "Delivered",
    "JobCore",
    "Outcome",
    "PoolJob",
    "Run",
    "Segment",
    "size_for",
    "tasks_in",
]

Outcome = tuple[int, bool, object]
"""`(index, ok, value)`: the result if `ok`, else the exception instance."""


class Run:
    """The successes of consecutive tasks in one block: task `first + i` returned
    `values[i]`. What a job opened with `runs=True` gets for the outcomes that workers
    send in bulk, instead of one [Outcome][tasklanes._processes._job.Outcome] each."""

    __slots__ = ("first", "values")

    def __init__(self, first: int, values: list[Any]) -> None:
        self.first = first
        self.values = values

    def outcomes(self) -> list[Outcome]:
        """The same, one `(index, True, value)` per task."""
        return [(index, True, value) for index, value in enumerate(self.values, self.first)]

    def __repr__(self) -> str:
        return f"Run({self.first}, <{len(self.values)} values>)"


Delivered = Union[Outcome, Run]
"""What `deliver` receives a list of: outcomes, and with `runs=True` also runs."""


def tasks_in(out: list[Delivered]) -> int:
    """How many tasks' outcomes `out` holds."""
    n = len(out)
    for item in out:
        if type(item) is Run:
            n += len(item.values) - 1
    return n


class Segment:
    """Tasks waiting in a job's queue: `tasks[pos:]`, whose indexes are consecutive
    from `first + pos`. Only the manager thread moves `pos`."""

    __slots__ = ("first", "pos", "tasks")

    def __init__(self, first: int, tasks: list[Any]) -> None:
        self.first = first
        self.tasks = tasks
        self.pos = 0

TARGET_CHUNK_SECONDS = 0.004
"""How long one chunk should take to run, once a job's task duration is known."""

MAX_CHUNK = 2048

PIPELINE_DEPTH = 4
"""At most this many chunks in flight to one worker (the running one included), for
short tasks (see `_dispatch`)."""


def size_for(ewma: float) -> int:
    """Tasks per chunk for tasks of `ewma` seconds each."""
    # The measured time includes the worker's per-task overhead (it is the chunk's
    # run time divided by its tasks), so no separate allowance is needed.
    return max(1, min(MAX_CHUNK, int(TARGET_CHUNK_SECONDS / max(ewma, 1e-7))))


class JobCore:
    """The manager thread's books on one job. Only the manager thread writes here
    (but for `delivered` once the manager is gone, see
    [PoolJob.put][tasklanes._processes._job.PoolJob.put])."""

    __slots__ = (
        "cancelled",
        "deliver",
        "delivered",
        "ewma",
        "holders",
        "input_closed",
        "input_ended",
        "limit",
        "map_fn",
        "max_size",
        "on_gone",
        "on_settled",
        "out",
        "put",
        "queue",
        "requeue",
        "run_count",
        "run_hist",
        "run_max",
        "run_total",
        "runs",
        "settled",
        "singles",
        "taken",
        "timeout",
    )

    def __init__(
        self,
        limit: int,
        timeout: float | None,
        deliver: Callable[[list[Delivered]], None],
        on_settled: Callable[[], None],
        runs: bool = False,
        map_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        self.limit = limit
        #: Not None: the job's tasks are the items of ``amap(map_fn, items)`` themselves,
        #: each meaning ``map_fn(item)`` (no `Call` per item; see `_wire.encode_items`).
        self.map_fn = map_fn
        self.timeout = timeout
        self.deliver = deliver
        self.on_settled = on_settled
        #: Called with a task's index when the worker killed for that task's timeout
        #: is gone (reaped): a killed task's limiters are held until then.
        self.on_gone: Callable[[int], None] | None = None
        self.runs = runs  # deliver bulk successes as `Run`s (else as outcomes)
        self.queue: deque[Segment] = deque()  # shared with the handle, see the module doc
        self.put = 0  # tasks put: written by the putting thread, under the door lock
        # Tasks that left the queue (sent, or dropped), less those put back: the
        # manager's count, so that `put - taken` is what waits in the queue.
        self.taken = 0
        self.delivered = 0
        self.input_closed = False
        # Shared: set by the putting thread (`put(last=True)`) before it queues the
        # last segment: from then on the queue is the tail of the batch, which the
        # dispatcher splits so that it spreads over the workers.
        self.input_ended = False
        self.cancelled = False
        self.settled = False
        self.holders = 0  # workers holding chunks of this job
        self.ewma: float | None = None  # seconds per task, measured in the workers
        self.max_size = 1
        self.singles = 0  # tasks to send one per chunk (after an unloadable chunk)
        self.out: list[Delivered] = []  # outcomes to deliver on this turn of the loop
        self.requeue: list[Segment] = []  # tasks to run again, at the front of the queue
        # Run time of the job's finished chunks, measured in the workers.
        self.run_count = 0
        self.run_total = 0.0
        self.run_max = 0.0
        self.run_hist: dict[int, int] = {}  # run-time histogram (see `tasklanes._stats`)

    @property
    def queued(self) -> int:
        """Tasks waiting in the queue (not counting `requeue`)."""
        return self.put - self.taken

    def take(self, size: int) -> tuple[int, list[Any]]:
        """Up to `size` tasks from the front of the queue (not empty): `(first index,
        tasks)`, their indexes consecutive. Consecutive segments are joined; a gap
        (tasks put back before others) ends the chunk early."""
        q = self.queue
        seg = q[0]
        pos = seg.pos
        first = seg.first + pos
        tasks = seg.tasks[pos : pos + size]
        seg.pos = pos = pos + len(tasks)
        if pos >= len(seg.tasks):
            q.popleft()
            while len(tasks) < size and q and q[0].first + q[0].pos == first + len(tasks):
                seg = q[0]
                more = seg.tasks[seg.pos : seg.pos + size - len(tasks)]
                tasks += more
                seg.pos += len(more)
                if seg.pos < len(seg.tasks):
                    break
                q.popleft()
        self.taken += len(tasks)
        return first, tasks

    def put_back(self, first: int, tasks: list[Any]) -> None:
        """Tasks to run again (`first` onwards, consecutive): they go to the front of
        the queue on the manager's next turn, before any task not sent yet."""
        if tasks:
            self.requeue.append(Segment(first, tasks))

    def requeue_now(self) -> None:
        """Move the tasks put back to the front of the queue."""
        requeue = self.requeue
        if requeue:
            self.queue.extendleft(reversed(requeue))
            self.taken -= sum(len(seg.tasks) - seg.pos for seg in requeue)
            requeue.clear()

    def drop_queue(self) -> list[tuple[int, list[Any]]]:
        """Empty the queue and the tasks put back: what they held, as `(first index,
        tasks)` runs, the tasks put back first."""
        dropped = []
        for seg in [*self.requeue, *self.queue]:
            if seg.pos < len(seg.tasks):
                dropped.append((seg.first + seg.pos, seg.tasks[seg.pos :]))
        n_queued = sum(len(seg.tasks) - seg.pos for seg in self.queue)
        self.queue.clear()
        self.requeue.clear()
        self.taken += n_queued
        return dropped


class PoolJob:
    """One batch of tasks submitted to a [ProcessPool][tasklanes._processes._pool.ProcessPool].

    Made by `ProcessPool.open_job`. Every method is non-blocking and may be called
    from any thread; outcomes come back through the `deliver` callback given to
    `open_job`, from the pool's manager thread.
    """

    __slots__ = ("_cancel_requested", "_core", "_manager", "_queue")

    def __init__(self, manager: Manager, core: JobCore) -> None:
        self._manager = manager
        self._core = core
        self._queue = core.queue
        self._cancel_requested = False

    def put(self, first: int, tasks: list[Any], last: bool = False) -> None:
        """Append `tasks` to this job's queue, with the indexes `first`, `first + 1`, ...

        `last`: no task comes after these (the input has ended; `tasks` may then be
        empty). Until then the pool sends full chunks; once the input has ended it
        splits what is left into smaller chunks, so that the tail of the batch spreads
        over the workers -- a queue that is short only because a lazy input is fed
        piece by piece is not mistaken for the tail.

        Each task is a zero-argument callable that pickles. Pickling happens later, on
        the manager thread, in chunks; a task that does not pickle fails alone, with
        `TypeError`. Ignored after [cancel][tasklanes._processes._job.PoolJob.cancel];
        once the pool is closed, every task fails at once with the pool's closed error.
        The pool keeps `tasks` (the list itself) until they are sent: do not change it.
        """
        if last:
            self._core.input_ended = True
        if self._cancel_requested or not tasks:
            return
        segment = Segment(first, tasks)
        manager = self._manager
        # Under the door lock: either the items are queued before the manager stops
        # taking work (and its shutdown fails them), or we learn it stopped and fail
        # them here. Checked and acted on in one step, so none can fall in between.
        with manager.door:
            if manager.accepting:
                # Counted first: the manager never sees a segment it has not counted.
                self._core.put += len(tasks)
                self._queue.append(segment)
                manager.wakeup.wake()
                return
        # The manager is gone: nobody else delivers for this job any more.
        core = self._core
        n = len(tasks)
        core.put += n
        core.taken += n
        core.delivered += n
        core.deliver([(index, False, closed_error(index)) for index in range(first, first + n)])

    def expect(self, seconds: float) -> None:
        """A hint, before the first [put][tasklanes._processes._job.PoolJob.put]: this
        job's tasks should take about `seconds` each (as measured on an earlier job of
        the same function). Its first chunks are then sized from it, rather than
        starting at one task and growing as durations come back. A chunk that turns
        out long still hands its unstarted tasks back after its time budget."""
        core = self._core
        if core.ewma is None and seconds > 0:
            core.ewma = seconds
            core.max_size = size_for(seconds)

    def close_input(self) -> None:
        """Promise that no more [put][tasklanes._processes._job.PoolJob.put] calls will
        come; `on_settled` then runs once every task put has been delivered."""
        from ._commands import CloseInput

        self._manager.submit(CloseInput(self._core))

    def cancel(self) -> None:
        """Stop this job: drop its queued tasks, kill the workers running its tasks.

        Killed workers get SIGTERM, then SIGKILL after a short grace, and are replaced.
        Tasks of other jobs are not affected. Tasks dropped or killed get no outcome;
        `on_settled` runs once none of this job's tasks runs anymore.
        """
        if self._cancel_requested:
            return
        self._cancel_requested = True
        from ._commands import CancelJob

        self._manager.submit(CancelJob(self._core))

    @property
    def unfinished(self) -> int:
        """Tasks put but not delivered yet."""
        return self._core.put - self._core.delivered

    @property
    def running(self) -> int:
        """Workers holding chunks of this job right now (at most `limit`)."""
        return self._core.holders

    @property
    def demand(self) -> int:
        """How many more tasks the pool would like queued for this job right now.

        A hint for a caller that feeds the job lazily: enough queued tasks to fill the
        pipeline of every worker the job may use (`PIPELINE_DEPTH` chunks each), so
        that one refill keeps them all busy. Zero when there are enough.
        """
        core = self._core
        slots = min(core.limit, self._manager.max_workers)
        ewma = core.ewma
        size = 1 if ewma is None else size_for(ewma)
        return max(0, PIPELINE_DEPTH * slots * size - core.queued)

    # Run time of the job's finished chunks, measured in the workers (read by the
    # lane for its stats once the job has settled).
    @property
    def run_count(self) -> int:
        return self._core.run_count

    @property
    def run_total(self) -> float:
        return self._core.run_total

    @property
    def run_max(self) -> float:
        return self._core.run_max

    @property
    def run_hist(self) -> dict[int, int]:
        """Run-time histogram of the finished chunks (each task counted at its chunk's mean)."""
        return self._core.run_hist
