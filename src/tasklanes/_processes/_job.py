"""A job: one batch of tasks submitted to the pool.

Two halves, as two threads use them: [PoolJob][tasklanes._processes._job.PoolJob] is
the caller's handle (put, close_input, cancel, counters) and
[JobCore][tasklanes._processes._job.JobCore] the manager's books (what is queued,
running, delivered; the measured task duration). The only structure both touch is the
queue of tasks put, a `deque` (atomic appends and pops), and it is extended under the
pool's door lock so that a put never races the pool's shutdown.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import closed_error
from ._wire import Item

if TYPE_CHECKING:
    from ._manager import Manager

__all__ = ["MAX_CHUNK", "TARGET_CHUNK_SECONDS", "JobCore", "Outcome", "PoolJob", "size_for"]

Outcome = tuple[int, bool, object]
"""`(index, ok, value)`: the result if `ok`, else the exception instance."""

TARGET_CHUNK_SECONDS = 0.004
"""How long one chunk should take to run, once a job's task duration is known."""

MAX_CHUNK = 2048


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
        "limit",
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
        "settled",
        "singles",
        "timeout",
    )

    def __init__(
        self,
        limit: int,
        timeout: float | None,
        deliver: Callable[[list[Outcome]], None],
        on_settled: Callable[[], None],
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.deliver = deliver
        self.on_settled = on_settled
        #: Called with a task's index when the worker killed for that task's timeout
        #: is gone (reaped): a killed task's limiters are held until then.
        self.on_gone: Callable[[int], None] | None = None
        self.queue: deque[Item] = deque()  # shared with the handle, see the module doc
        self.put = 0  # tasks put: written by the putting thread, under the door lock
        self.delivered = 0
        self.input_closed = False
        self.cancelled = False
        self.settled = False
        self.holders = 0  # workers holding chunks of this job
        self.ewma: float | None = None  # seconds per task, measured in the workers
        self.max_size = 1
        self.singles = 0  # tasks to send one per chunk (after an unloadable chunk)
        self.out: list[Outcome] = []  # outcomes to deliver on this turn of the loop
        self.requeue: list[Item] = []  # tasks to run again, at the front of the queue
        # Run time of the job's finished chunks, measured in the workers.
        self.run_count = 0
        self.run_total = 0.0
        self.run_max = 0.0
        self.run_hist: dict[int, int] = {}  # run-time histogram (see `tasklanes._stats`)


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

    def put(self, items: list[Item]) -> None:
        """Append `(index, task)` pairs to this job's queue.

        `task` is a zero-argument callable that pickles. Pickling happens later, on
        the manager thread, in chunks; a task that does not pickle fails alone, with
        `TypeError`. Ignored after [cancel][tasklanes._processes._job.PoolJob.cancel];
        once the pool is closed, every task fails at once with the pool's closed error.
        """
        if self._cancel_requested:
            return
        manager = self._manager
        # Under the door lock: either the items are queued before the manager stops
        # taking work (and its shutdown fails them), or we learn it stopped and fail
        # them here. Checked and acted on in one step, so none can fall in between.
        with manager.door:
            if manager.accepting:
                self._queue.extend(items)
                self._core.put += len(items)
                manager.wakeup.wake()
                return
        # The manager is gone: nobody else delivers for this job any more.
        core = self._core
        core.put += len(items)
        core.delivered += len(items)
        core.deliver([(index, False, closed_error(index)) for index, _ in items])

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

        A hint for a caller that feeds the job lazily: enough queued tasks to fill a
        chunk for every worker the job may use, twice over. Zero when there are enough.
        """
        core = self._core
        slots = min(core.limit, self._manager.max_workers)
        ewma = core.ewma
        size = 1 if ewma is None else size_for(ewma)
        return max(0, 2 * slots * size - len(self._queue))

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
