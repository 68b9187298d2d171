"""The parent's view of one worker process, and how one is started.

A worker goes through [WorkerState][tasklanes._processes._workers.WorkerState]:
`STARTING` (started, has not said "ready"), `READY` (takes chunks), `RETIRING` (has
used up its task budget or memory limit: finishes what it holds, takes nothing new),
`DOOMED` (being stopped by us: killed for a timeout or a cancel, or told to exit after
retiring) and `DEAD` (its sentinel fired). Only the manager thread reads or writes a
[WorkerHandle][tasklanes._processes._workers.WorkerHandle].
"""

from __future__ import annotations

import enum
import multiprocessing.connection
import os
from collections import deque
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from . import _worker
from ._context import WORKER_NAME, start_process, worker_target
from ._job import JobCore
from ._log import log
from ._protocol import JOURNAL_BYTES
from ._shared import SLOT_BYTES, SharedBlock
from ._wire import FrameSplitter

if TYPE_CHECKING:
    from ._stream import BigFrameReader
    from ._zygote import Zygote, ZygoteChild

__all__ = ["Chunk", "WorkerHandle", "WorkerState", "cpu_seconds", "rss_bytes", "spawn_worker"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    DOOMED = "doomed"
    DEAD = "dead"


STARTING = WorkerState.STARTING
READY = WorkerState.READY
RETIRING = WorkerState.RETIRING
DOOMED = WorkerState.DOOMED
DEAD = WorkerState.DEAD


class Chunk:
    """Tasks of one job sent to a worker in one message: `tasks[k]` is task `first + k`
    of the job (a chunk's indexes are consecutive)."""

    __slots__ = ("done", "first", "id", "job", "tasks")

    def __init__(self, chunk_id: int, job: JobCore, first: int, tasks: list[Any]):
        self.id = chunk_id
        self.job = job
        self.first = first
        self.tasks = tasks
        self.done = 0  # outcomes received so far; tasks[done] is running (or next)


class WorkerHandle:
    """One worker process, its pipes and shared block, and what it holds."""

    __slots__ = (
        "assigned",
        "block",
        "frames",
        "inflight",
        "job",
        "journal",
        "kill_at",
        "last_epoch",
        "outbuf",
        "parsed",
        "pid",
        "proc",
        "rconn",
        "reading",
        "rfd",
        "sentinel",
        "slot",
        "state",
        "stream",
        "task_start",
        "timed_out",
        "wconn",
        "wfd",
        "writing",
    )

    def __init__(
        self,
        proc: BaseProcess | ZygoteChild,
        wconn: multiprocessing.connection.Connection,
        rconn: multiprocessing.connection.Connection,
        block: SharedBlock,
    ) -> None:
        self.proc = proc
        self.block = block
        self.state = STARTING
        # Shared with the worker: [start time of its current task, tasks started].
        self.slot = memoryview(block.mmap)[:SLOT_BYTES].cast("d")
        self.parsed = 0  # outcomes read from it (so slot[0] - parsed - 1: running task)
        # Shared too: the outcomes it holds (see _protocol), and the journal epoch of
        # the last held batch it sent us.
        self.journal = memoryview(block.mmap)[SLOT_BYTES:]
        self.last_epoch = -1
        self.pid: int = proc.pid or 0
        self.wconn = wconn
        self.rconn = rconn
        self.wfd = wconn.fileno()
        self.rfd = rconn.fileno()
        self.sentinel: int = proc.sentinel
        self.inflight: deque[Chunk] = deque()
        self.job: JobCore | None = None  # whose chunks are in flight (one job at a time)
        self.assigned = 0  # tasks sent to it in its life (for max_tasks_per_worker)
        self.reading = False
        self.writing = False
        self.outbuf = bytearray()
        self.frames = FrameSplitter()
        self.task_start = 0.0
        self.kill_at: float | None = None  # when SIGKILL follows (DOOMED only)
        self.timed_out: tuple[Chunk, int] | None = None  # (chunk, position) already failed
        # The reader of a big frame that owns `rfd` meanwhile (see `_stream`), or None.
        self.stream: BigFrameReader | None = None

    @property
    def alive(self) -> bool:
        """Started and not being stopped: counts towards the pool's size."""
        return self.state is READY or self.state is STARTING or self.state is RETIRING

    def running_offset(self) -> int:
        """Which of its tasks without an outcome yet is running: 0 for the first,
        more when finished outcomes wait in its buffer; -1 when none runs. Only for a
        job with a per-task timeout: the worker publishes no start for the others."""
        return int(self.slot[0]) - self.parsed - 1

    def locate(self, offset: int) -> tuple[Chunk, int] | None:
        """The `offset`-th task without an outcome among its chunks in flight."""
        for chunk in self.inflight:
            remaining = len(chunk.tasks) - chunk.done
            if offset < remaining:
                return chunk, chunk.done + offset
            offset -= remaining
        return None


def spawn_worker(
    ctx: BaseContext,
    alive_r: multiprocessing.connection.Connection,
    parent_fds: tuple[int, ...] = (),
    zygote: Zygote | None = None,
) -> WorkerHandle:
    """Start one worker process (blocks for as long as the start method takes).

    `parent_fds`: the pool's own descriptors that a forked child must close (see
    `_context.worker_target`). With a `zygote`, it forks the worker (`ctx` unused).
    """
    task_r, task_w = ctx.Pipe(duplex=False)
    result_r, result_w = ctx.Pipe(duplex=False)
    block = SharedBlock(SLOT_BYTES + JOURNAL_BYTES)
    proc: BaseProcess | ZygoteChild
    try:
        if zygote is not None:
            proc = zygote.start_worker(task_r, result_w, alive_r, block)
        else:
            proc = _start_process(
                ctx,
                (task_r, result_w, alive_r, block),
                (*parent_fds, task_w.fileno(), result_r.fileno()),
            )
    except BaseException:
        for conn in (task_r, task_w, result_r, result_w):
            conn.close()
        block.close()
        raise
    # The child has its own copies now; ours would keep the pipes open after it dies.
    task_r.close()
    result_w.close()
    os.set_blocking(task_w.fileno(), False)
    os.set_blocking(result_r.fileno(), False)
    block.started()
    return WorkerHandle(proc, task_w, result_r, block)


def lower_priority(pid: int, nice: int) -> None:
    """Lower worker `pid`'s scheduling priority `nice` steps below this process's.

    Done from here, the parent, once the worker has started: lowering the priority
    of one's own child needs no privilege, and the worker's code stays unaware of it.
    The worker may have begun its first task meanwhile; from now on it yields to
    processes of higher priority (this one's event loop first) when the cores are
    busy. Where it cannot be done (no ``os.setpriority``, a sandbox), the worker
    keeps the parent's priority and a record says so.
    """
    try:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(mine + nice, 19))
    except (AttributeError, OSError) as exc:
        log.warning(
            "could not lower a worker's priority: %s",
            exc,
            extra={"pid": pid, "nice": nice},
        )


def _start_process(
    ctx: BaseContext, args: tuple[object, ...], parent_fds: tuple[int, ...]
) -> BaseProcess:
    """A worker started the `multiprocessing` way, with `ctx`'s start method, running
    `_worker.main(*args)`; a forked one closes `parent_fds`."""
    target, args = worker_target(ctx, _worker.main, args, parent_fds)
    proc: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
        target=target, args=args, name=WORKER_NAME, daemon=True
    )
    start_process(proc)
    return proc


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process `pid` in bytes (Linux `/proc`), None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (Linux `/proc`), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return None
