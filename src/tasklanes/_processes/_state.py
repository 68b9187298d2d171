"""Everything the manager thread owns, declared in one place.

The manager is one object ([Manager][tasklanes._processes._manager.Manager]) whose
behaviour is written in layers, one module per concern, each a class that builds on
the one before: this state, then reading results (`_results`), dispatch and chunk
sizing (`_dispatch`), deadlines, kills, deaths and respawns (`_reaper`), delivery
(`_delivery`) and the loop, commands and shutdown (`_manager`). Only the manager
thread touches these attributes, except the few marked *shared*.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import selectors
import threading
from collections import deque
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING

from ._job import JobCore
from ._workers import READY, RETIRING, STARTING, WorkerHandle

if TYPE_CHECKING:
    from ._commands import Command
    from ._spawner import Spawner
    from ._zygote import Zygote

__all__ = ["STAT_NAMES", "ManagerState", "Wakeup"]

STAT_NAMES = (
    "workers",
    "starting",
    "started",
    "crashed",
    "killed",
    "timed_out",
    "recycled",
    "chunks",
    "tasks",
    "returned",
    "jobs",
    "spawn_errors",
    "streamed",  # big frames unpickled straight from the pipe (see `_stream`)
)


class Wakeup:
    """The pipe that wakes the manager from its `select` (as CPython's
    `_ThreadWakeup` in `concurrent.futures.process`).

    At most one byte per manager wake-up: the manager clears `pending` after it drained
    the pipe and before it looks at its queues, so a wake after that sees the flag
    clear and writes. [wake][tasklanes._processes._state.Wakeup.wake] is only called
    with the manager's door lock held and while the manager accepts work, and the
    manager stops accepting (under the same lock) before it closes the pipe: a wake can
    never write into a closed, perhaps reused, descriptor.
    """

    __slots__ = ("pending", "r", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.pending = False

    def wake(self) -> None:
        if not self.pending:
            self.pending = True
            try:
                os.write(self.w, b"x")
            except BlockingIOError:
                pass  # full: the manager has bytes to read, it will wake anyway

    def drain(self) -> None:
        # Drain first, then clear the flag: a wake-up that lands in between finds the
        # flag still set and writes nothing, but its command is read after the clear.
        # Clearing first would let the drain eat the byte of a wake-up that set the
        # flag again, and the next one would never be written.
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass
        self.pending = False

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class ManagerState:
    """The manager's state (see the module doc)."""

    def __init__(
        self,
        max_workers: int,
        ctx: BaseContext,
        stats: dict[str, int],
        max_tasks_per_worker: int | None,
        max_worker_memory: int | None,
        zygote: Zygote | None = None,
    ) -> None:
        self.max_workers = max_workers
        self.ctx = ctx
        self.zygote = zygote  # forks the workers, when the pool has one (`_zygote`)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory = max_worker_memory
        # Shared: the door. Callers queue commands and tasks under it while
        # `accepting`; the manager turns `accepting` off under it before its last look
        # at the queues, so nothing queued is ever left behind.
        self.door = threading.Lock()
        self.accepting = True
        self.stopping = False  # shared: set by close(), read by the loop
        self.commands: deque[Command] = deque()  # shared: appended under the door
        self.wakeup = Wakeup()  # shared: see Wakeup
        self.stats = stats  # shared: read by any thread (a copy)
        self.pids: list[int] = []  # shared: replaced, never mutated
        # Manager-only from here on.
        self.workers: list[WorkerHandle] = []
        self.jobs: list[JobCore] = []
        self.rr = 0  # round-robin position among jobs
        self.spawning = 0
        self.spawn_retry_at: float | None = None
        self.spawn_failures = 0  # in a row, reset by a worker that becomes ready
        self.spawn_error: BaseException | None = None
        self.next_chunk_id = 0
        self.selector: selectors.BaseSelector = selectors.DefaultSelector()
        # Every worker gets the read end of this pipe; only we hold the write end, so
        # the workers see end of file when this process dies, however it dies.
        alive_r, self.alive_w = os.pipe()
        self.alive_r: multiprocessing.connection.Connection | None = (
            multiprocessing.connection.Connection(alive_r, writable=False)
        )
        self.spawner: Spawner | None = None

    def parent_fds(self) -> tuple[int, ...]:
        """The pool's descriptors a forked worker must close (it inherits them all)."""
        return (self.alive_w, self.wakeup.r, self.wakeup.w)

    def submit(self, command: Command) -> bool:
        """Queue `command` for the manager thread, from any thread (the last layer,
        `_manager.Manager`, defines it)."""
        raise NotImplementedError

    def alive_reader(self) -> multiprocessing.connection.Connection:
        if self.alive_r is None:
            raise RuntimeError("the pool is closed")
        return self.alive_r

    def _update_counts(self) -> None:
        serving = [w for w in self.workers if w.state is READY or w.state is RETIRING]
        self.pids = [w.pid for w in serving]
        stats = self.stats
        stats["workers"] = len(serving)
        stats["starting"] = self.spawning + sum(1 for w in self.workers if w.state is STARTING)
        stats["jobs"] = len(self.jobs)
