"""The parent side of tasklanes' worker-process pool.

A :class:`ProcessPool` owns ``max_workers`` worker processes and one *manager thread*
that does all the work: it spawns workers (through a helper thread, because starting a
process blocks), pickles chunks of tasks and writes them to workers, reads their results
in bulk, enforces timeouts, kills and replaces workers, and hands outcomes to each job's
``deliver`` callback. Callers only ever touch lock-free structures (``deque`` appends are
atomic) and poke a wakeup pipe, so nothing they call blocks.

Work arrives as *jobs* (:class:`PoolJob`): one per batch of the cpu lane. Jobs share the
workers round-robin; each job has its own ``limit`` (how many workers may hold its
chunks at once), its own per-task ``timeout`` and its own estimate of task duration,
from which the chunk size follows.

Scheduling in one paragraph: a new job's chunks hold one task. Every outcome carries the
task's run time as measured in the worker; a job keeps a moving average of them and
sizes its chunks to last about ``TARGET_CHUNK_SECONDS``. A chunk also carries a time
budget: a worker that runs past it hands the unstarted rest back, and the parent puts
those tasks at the front of the job's queue for whichever worker is free. When no job is
waiting for a worker, a worker running short tasks gets a second chunk queued behind its
current one, so that it never waits for a round trip.

The start time of a task, for its timeout, is when the parent learnt that the previous
task of the same worker finished (the arrival of its outcome), or when the chunk was
sent to an idle worker. That errs on the side of lateness by a pipe round trip, never
early, and costs no extra message.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import selectors
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.context import BaseContext
from time import monotonic
from typing import Any

from .._call import Call
from .._errors import TaskTimeout, WorkerCrashed, closed_error
from . import _worker
from ._protocol import (
    CHUNK_HEADER,
    FRAME_HEADER,
    FRAME_HEADER_LONG,
    JOURNAL_BYTES,
    JOURNAL_HEADER,
    MANY_HEADER,
    RECORD_LEN,
    SECONDS,
    TAG_OK,
    TAG_OK_MANY,
    TAG_OTHER,
    frame,
)
from ._shared import SLOT_BYTES, SharedBlock

__all__ = ["Outcome", "PoolJob", "ProcessPool", "default_context"]

Outcome = tuple[int, bool, object]
"""``(index, ok, value)``: the result if ``ok``, else the exception instance."""

TARGET_CHUNK_SECONDS = 0.004
"""How long one chunk should take to run, once a job's task duration is known."""

CHUNK_BUDGET_SECONDS = 0.02
"""A worker that has spent this long on a chunk gives back the tasks it has not started."""

MAX_CHUNK = 2048
PIPELINE_BELOW_SECONDS = 0.002
"""Queue a second chunk behind a running one only for tasks shorter than this."""

KILL_GRACE_SECONDS = 0.2
"""Between SIGTERM and SIGKILL when the pool kills a worker."""

SPAWN_RETRY_SECONDS = 0.5
# After this many worker starts in a row fail (no worker ready in between), the pool
# stops trying and fails the tasks that wait, rather than leave their callers hanging.
# The usual cause is a script without ``if __name__ == "__main__":``: the worker side
# imports the main module, which then tries to start workers itself.
SPAWN_GIVE_UP = 3
_READ_SIZE = 1 << 20
_WORKER_MODULE = _worker.__name__

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_unpack_len = FRAME_HEADER.unpack_from
_unpack_long = FRAME_HEADER_LONG.unpack_from
_unpack_seconds = SECONDS.unpack_from
_unpack_many = MANY_HEADER.unpack_from
_MANY_SIZE = MANY_HEADER.size
_unpack_record = RECORD_LEN.unpack_from
_REC = RECORD_LEN.size
_partial = functools.partial


def default_context() -> BaseContext:
    """The start method the pool uses unless told otherwise.

    ``forkserver`` on Linux: safe with threads in the parent (unlike ``fork``), and a
    worker starts in milliseconds because the server has already imported the worker
    module (we add it to the server's preload list). ``spawn`` elsewhere.

    ``multiprocessing.get_context("forkserver")`` is a process-wide singleton, and so is
    its server, so the preload list we extend is shared with any other user of that
    context. That is harmless: we keep the modules already listed and only add our
    import-light worker module; and if the server already runs, the call has no effect.
    """
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if _WORKER_MODULE not in current:
        ctx.set_forkserver_preload([*current, _WORKER_MODULE])
    return ctx


class PoolJob:
    """One batch of tasks submitted to a :class:`ProcessPool`.

    Made by :meth:`ProcessPool.open_job`. Every method is non-blocking and may be called
    from any thread; outcomes come back through the ``deliver`` callback given to
    ``open_job``, from the pool's manager thread.
    """

    def __init__(
        self,
        pool: ProcessPool,
        limit: int,
        timeout: float | None,
        deliver: Callable[[list[Outcome]], None],
        on_settled: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._limit = limit
        self._timeout = timeout
        self._deliver = deliver
        self._on_settled = on_settled
        # Appended to by put() (any thread), consumed by the manager: deque's append,
        # extend and popleft are atomic, so no lock.
        self._queue: deque[tuple[int, Callable[[], object]]] = deque()
        self._put = 0  # written by the putting thread only
        self._cancel_requested = False
        # The rest belongs to the manager thread.
        self._delivered = 0
        self._input_closed = False
        self._cancelled = False
        self._settled = False
        self._holders = 0  # workers holding chunks of this job
        self._ewma: float | None = None  # seconds per task, measured in the workers
        self._max_size = 1
        self._singles = 0  # tasks to send one per chunk (after an unloadable chunk)
        self._out: list[Outcome] = []
        #: Run time of the job's finished chunks, measured in the workers (read by the
        #: lane for its stats once the job has settled).
        self.run_count = 0
        self.run_total = 0.0
        self.run_max = 0.0
        self._requeue: list[tuple[int, Callable[[], object]]] = []
        #: Called (manager thread) with a task's index when the worker killed for that
        #: task's timeout is gone: its limiters are held until then.
        self.on_gone: Callable[[int], None] | None = None

    def put(self, items: list[tuple[int, Callable[[], object]]]) -> None:
        """Append ``(index, task)`` pairs to this job's queue.

        ``task`` is a zero-argument callable that pickles. Pickling happens later, on
        the manager thread, in chunks; a task that does not pickle fails alone, with
        ``TypeError``. Ignored after :meth:`cancel` or once the pool is closed.
        """
        if self._cancel_requested:
            return
        if self._pool._closed:
            # Nothing will run them: say so now rather than leave the caller waiting.
            self._put += len(items)
            self._delivered += len(items)
            self._deliver([(index, False, closed_error(index)) for index, _ in items])
            return
        self._queue.extend(items)
        self._put += len(items)
        self._pool._wake()

    def close_input(self) -> None:
        """Promise that no more :meth:`put` calls will come.

        ``on_settled`` then runs once every task put has been delivered.
        """
        self._pool._command("close_input", self)

    def cancel(self) -> None:
        """Stop this job: drop its queued tasks, kill the workers running its tasks.

        Killed workers get SIGTERM, then SIGKILL after a short grace, and are replaced.
        Tasks of other jobs are not affected. Tasks dropped or killed get no outcome;
        ``on_settled`` runs once none of this job's tasks runs anymore.
        """
        if self._cancel_requested:
            return
        self._cancel_requested = True
        self._pool._command("cancel", self)

    @property
    def unfinished(self) -> int:
        """Tasks put but not delivered yet."""
        return self._put - self._delivered

    @property
    def running(self) -> int:
        """Workers holding chunks of this job right now (at most ``limit``)."""
        return self._holders

    @property
    def demand(self) -> int:
        """How many more tasks the pool would like queued for this job right now.

        A hint for a caller that feeds the job lazily: enough queued tasks to fill a
        chunk for every worker the job may use, twice over. Zero when there are enough.
        """
        slots = min(self._limit, self._pool._max_workers)
        ewma = self._ewma
        size = 1 if ewma is None else _size_for(ewma)
        return max(0, 2 * slots * size - len(self._queue))


def _size_for(ewma: float) -> int:
    # The measured time includes the worker's per-task overhead (it is the chunk's
    # run time divided by its tasks), so no separate allowance is needed.
    return max(1, min(MAX_CHUNK, int(TARGET_CHUNK_SECONDS / max(ewma, 1e-7))))


def _encode(items: list[tuple[int, Callable[[], object]]]) -> bytes:
    """Pickle a chunk's tasks as ``(fn, seq)`` (see ``_protocol``)."""
    first = items[0][1]
    args: list[tuple[Any, ...]] = []
    append = args.append
    if type(first) is _partial:
        fn = first.func
        for _, t in items:
            if type(t) is not _partial or t.func is not fn or t.keywords:
                break
            append(t.args)
        else:
            return _dumps((fn, args), _PROTOCOL)
    elif type(first) is Call:
        fn = first.fn
        for _, t in items:
            if type(t) is not Call or t.fn is not fn or t.kwargs:
                break
            append(t.args)
        else:
            return _dumps((fn, args), _PROTOCOL)
    return _dumps((None, [t for _, t in items]), _PROTOCOL)


class _Chunk:
    __slots__ = ("done", "id", "items", "job")

    def __init__(self, chunk_id: int, job: PoolJob, items: list[tuple[int, Callable[[], object]]]):
        self.id = chunk_id
        self.job = job
        self.items = items
        self.done = 0  # outcomes received so far; items[done] is running (or next)


class _Worker:
    __slots__ = (
        "block",
        "dead",
        "doomed",
        "inflight",
        "job",
        "journal",
        "kill_at",
        "last_epoch",
        "outbuf",
        "parsed",
        "pid",
        "proc",
        "rbuf",
        "rconn",
        "reading",
        "ready",
        "reason",
        "rfd",
        "rneed",
        "sentinel",
        "slot",
        "task_start",
        "timed_out",
        "wconn",
        "wfd",
        "writing",
    )

    def __init__(
        self,
        proc: multiprocessing.process.BaseProcess,
        wconn: multiprocessing.connection.Connection,
        rconn: multiprocessing.connection.Connection,
        block: SharedBlock,
    ) -> None:
        self.proc = proc
        self.block = block
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
        self.inflight: deque[_Chunk] = deque()
        self.job: PoolJob | None = None  # whose chunks are in flight (one job at a time)
        self.ready = False
        self.reading = False
        self.writing = False
        self.outbuf = bytearray()
        # The start of a message not complete yet, and how long it will be once it
        # is (0: not known yet). A big result arrives in many reads: they are
        # gathered here and parsed once, not re-joined on every read.
        self.rbuf = bytearray()
        self.rneed = 0
        self.task_start = 0.0
        self.doomed = False  # being killed by us
        self.reason = ""  # why: "timeout", "cancel"
        self.kill_at: float | None = None  # when SIGKILL follows the SIGTERM
        self.timed_out: tuple[_Chunk, int] | None = None  # (chunk, position) already failed
        self.dead = False


class ProcessPool:
    """A warm pool of worker processes shared by many jobs.

    Nothing starts in the constructor. The first :meth:`open_job` starts the manager
    thread, which starts the workers; the caller does not wait for them.

    ``mp_context`` picks the start method (default: :func:`default_context`). With the
    ``fork`` method, workers inherit the parent's other pipes, so a worker may not notice
    its parent's death while it runs a long task; prefer forkserver or spawn.
    """

    def __init__(self, max_workers: int, mp_context: BaseContext | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._max_workers = max_workers
        self._ctx = mp_context
        self._lock = threading.Lock()
        self._closed = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._commands: deque[tuple[str, Any]] = deque()
        self._wake_pending = False
        self._wake_r = -1
        self._wake_w = -1
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "workers",
                "starting",
                "started",
                "crashed",
                "killed",
                "timed_out",
                "chunks",
                "tasks",
                "returned",
                "jobs",
                "spawn_errors",
            ),
            0,
        )
        self._pids: list[int] = []
        # Manager-thread state.
        self._workers: list[_Worker] = []
        self._jobs: list[PoolJob] = []
        self._rr = 0
        self._spawning = 0
        self._spawn_retry_at: float | None = None
        self._spawn_failures = 0  # in a row, reset by a worker that becomes ready
        self._spawn_error: BaseException | None = None
        self._next_chunk_id = 0
        self._selector: selectors.BaseSelector | None = None
        self._spawn_queue: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._spawner: threading.Thread | None = None
        self._alive_r: multiprocessing.connection.Connection | None = None
        self._alive_w = -1

    # ------------------------------------------------------------------ public API

    def open_job(
        self,
        *,
        limit: int,
        timeout: float | None,
        deliver: Callable[[list[Outcome]], None],
        on_settled: Callable[[], None],
    ) -> PoolJob:
        """Open a job; starts the pool on first use (without waiting for it).

        ``deliver`` is called from a pool thread with a list of outcomes, one call per
        batch the pool read from its workers. ``on_settled`` is called once, from a pool
        thread: after :meth:`PoolJob.cancel` once none of the job's tasks runs anymore,
        or after :meth:`PoolJob.close_input` once every task put has been delivered.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        job = PoolJob(self, limit, timeout, deliver, on_settled)
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProcessPool is closed")
            if self._thread is None:
                self._start()
        self._command("open", job)
        return job

    def close(self) -> None:
        """Stop the pool: terminate, then kill, and reap every worker. Idempotent.

        Safe from any thread, also while jobs run (their unfinished tasks get no
        outcome). Called from a pool callback, it returns at once and the manager
        thread finishes the shutdown right after.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._wake()
        if thread is not threading.current_thread():
            thread.join()
        atexit.unregister(self.close)

    def stats(self) -> dict[str, int]:
        """Counters: ``workers`` (alive and serving), ``starting``, ``started`` (in total),
        ``crashed``, ``killed`` (by timeouts and cancels), ``timed_out``, ``chunks`` and
        ``tasks`` (sent to workers), ``returned`` (chunks handed back over budget),
        ``jobs`` (open), ``spawn_errors``."""
        return dict(self._stats)

    def worker_pids(self) -> list[int]:
        """Process ids of the workers currently serving."""
        return list(self._pids)

    # ------------------------------------------------------------------ plumbing

    def _start(self) -> None:
        # Called with the lock held, once.
        if self._ctx is None:
            self._ctx = default_context()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Every worker gets the read end of this pipe; only we hold the write end, so
        # the workers see end of file when this process dies, however it dies.
        alive_r, self._alive_w = os.pipe()
        self._alive_r = multiprocessing.connection.Connection(alive_r, writable=False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._spawner = threading.Thread(
            target=self._spawner_main, name="tasklanes-pool-spawner", daemon=True
        )
        self._spawner.start()
        # Daemon, so that it never holds up interpreter exit; the atexit hook closes
        # the pool (atexit hooks run before daemon threads are frozen).
        self._thread = threading.Thread(
            target=self._manager_main, name="tasklanes-pool", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def _wake(self) -> None:
        # One byte per manager wake-up at most: the manager clears the flag before it
        # looks at the queues, so a put after that sees the flag clear and writes.
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def _command(self, name: str, arg: object) -> None:
        self._commands.append((name, arg))
        self._wake()

    # ------------------------------------------------------------------ spawner thread

    def _spawner_main(self) -> None:
        # Process.start() blocks (the first forkserver start takes tens of ms), so it
        # runs here, not on the manager thread, and never on the caller's.
        while self._spawn_queue.get():
            if self._closing:
                self._command("spawn_failed", None)
                continue
            try:
                worker = self._spawn_one()
            except Exception as exc:
                self._command("spawn_failed", exc)
            else:
                self._command("worker", worker)

    def _spawn_one(self) -> _Worker:
        ctx = self._ctx
        assert ctx is not None
        assert self._alive_r is not None
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        block = SharedBlock(SLOT_BYTES + JOURNAL_BYTES)
        try:
            proc = ctx.Process(  # type: ignore[attr-defined]
                target=_worker.main,
                args=(task_r, result_w, self._alive_r, block),
                name="tasklanes-worker",
                daemon=True,
            )
            proc.start()
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
        return _Worker(proc, task_w, result_r, block)

    # ------------------------------------------------------------------ manager thread

    def _manager_main(self) -> None:
        try:
            self._loop()
        except BaseException:
            # A bug here would leave jobs hanging; at least say so.
            sys.stderr.write("tasklanes: the process pool's manager thread crashed:\n")
            traceback.print_exc()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        sel = self._selector
        assert sel is not None
        wake_r = self._wake_r
        commands = self._commands
        while not self._closing:
            events = sel.select(self._next_timeout(monotonic()))
            now = monotonic()
            for key, _ in events:
                data = key.data
                if data is None:
                    # Drain first, then clear the flag: a wake-up that lands in
                    # between finds the flag still set and writes nothing, but its
                    # command (or ``_closing``) is read below, after the clear. Clearing
                    # first would let the drain eat the byte of a wake-up that set the
                    # flag again, and the next one would never be written: close()
                    # then waited forever on a sleeping manager.
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self._wake_pending = False
                    continue
                kind, worker = data
                if kind == 0:
                    self._read(worker, now)
                elif kind == 1:
                    self._flush(worker)
                elif not worker.dead:
                    self._on_exit(worker, now)
            while commands:
                name, arg = commands.popleft()
                self._handle_command(name, arg, now)
            self._check_deadlines(now)
            self._requeue_and_spawn(now)
            self._dispatch(now)
            self._deliver_and_settle()

    def _handle_command(self, name: str, arg: Any, now: float) -> None:
        if name == "open":
            # A new job gets fresh attempts, even after the pool gave up once.
            self._spawn_failures = 0
            self._jobs.append(arg)
            self._stats["jobs"] = len(self._jobs)
        elif name == "close_input":
            arg._input_closed = True
        elif name == "cancel":
            job: PoolJob = arg
            job._cancelled = True
            job._queue.clear()
            job._requeue.clear()
            job._out.clear()
            for w in self._workers:
                if w.job is job and not w.doomed:
                    self._kill(w, "cancel", now)
        elif name == "worker":
            self._spawning -= 1
            self._add_worker(arg)
        elif name == "spawn_failed":
            self._spawning -= 1
            if arg is not None:
                self._stats["spawn_errors"] += 1
                self._spawn_failures += 1
                self._spawn_error = arg
                self._spawn_retry_at = now + SPAWN_RETRY_SECONDS
                if self._stats["spawn_errors"] == 1:
                    sys.stderr.write(f"tasklanes: could not start a worker process: {arg!r}\n")
        self._update_counts()

    def _add_worker(self, w: _Worker) -> None:
        sel = self._selector
        assert sel is not None
        self._workers.append(w)
        self._stats["started"] += 1
        sel.register(w.rfd, selectors.EVENT_READ, (0, w))
        sel.register(w.sentinel, selectors.EVENT_READ, (2, w))
        w.reading = True

    def _update_counts(self) -> None:
        serving = [w for w in self._workers if w.ready and not w.doomed and not w.dead]
        self._pids = [w.pid for w in serving]
        self._stats["workers"] = len(serving)
        self._stats["starting"] = self._spawning + sum(
            1 for w in self._workers if not w.ready and not w.doomed and not w.dead
        )
        self._stats["jobs"] = len(self._jobs)

    def _next_timeout(self, now: float) -> float | None:
        deadline = float("inf")
        for w in self._workers:
            if w.doomed:
                if w.kill_at is not None and w.kill_at < deadline:
                    deadline = w.kill_at
            elif w.job is not None:
                timeout = w.job._timeout
                if timeout is not None and w.task_start + timeout < deadline:
                    deadline = w.task_start + timeout
        if self._spawn_retry_at is not None and self._spawn_retry_at < deadline:
            deadline = self._spawn_retry_at
        if deadline == float("inf"):
            return None
        return max(0.0, deadline - now)

    # -------------------------------------------------------------- reading results

    def _read(self, w: _Worker, now: float) -> None:
        try:
            data = os.read(w.rfd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of file: the worker is dying. Its sentinel tells us when it is dead.
            self._stop_reading(w)
            return
        self._parse(w, data, now)

    def _drain(self, w: _Worker, now: float) -> None:
        """Read everything a dead worker left in its pipe."""
        while w.reading:
            try:
                data = os.read(w.rfd, _READ_SIZE)
            except OSError:  # BlockingIOError too: a grandchild holds the pipe open
                data = b""
            if not data:
                self._stop_reading(w)
                return
            self._parse(w, data, now)

    def _stop_reading(self, w: _Worker) -> None:
        if w.reading:
            w.reading = False
            assert self._selector is not None
            self._selector.unregister(w.rfd)

    def _parse(self, w: _Worker, data: bytes, now: float) -> None:
        if w.rbuf:
            rbuf = w.rbuf
            rbuf += data
            if len(rbuf) < w.rneed:
                return  # the big message is still incomplete: gather more first
            data = bytes(rbuf)
            w.rbuf = bytearray()
            w.rneed = 0
        n = len(data)
        mv = memoryview(data)
        pos = 0
        loads = _loads
        unpack_len = _unpack_len
        unpack_seconds = _unpack_seconds
        inflight = w.inflight
        while n - pos >= 4:
            size = unpack_len(data, pos)[0]
            start = pos + 4
            if size < 0:
                if n - start < 8:
                    break
                size = _unpack_long(data, start)[0]
                start += 8
            end = start + size
            if end > n:
                break
            pos = end
            tag = data[start]
            if tag == TAG_OTHER:
                try:
                    msg = loads(mv[start + 1 : end])
                except BaseException as exc:
                    # An exception that was rebuilt in the worker but not here (its
                    # class is not importable in this process, say).
                    self._outcome(w, False, None, None, now, f"could not be unpickled: {exc!r}")
                    continue
                self._other(w, msg, now)
                continue
            if tag == TAG_OK_MANY:
                self._parse_many(w, mv[start + 1 : end], now)
                continue
            # The hot path: the outcome of the current task of this worker.
            seconds = None
            ok = True
            try:
                if tag == TAG_OK:
                    value = loads(mv[start + 1 : end])
                else:
                    seconds = unpack_seconds(data, start + 1)[0]
                    value = loads(mv[start + 9 : end])
            except BaseException as exc:
                ok = False
                value = exc
            chunk = inflight[0]
            k = chunk.done
            chunk.done = k + 1
            w.parsed += 1
            job = chunk.job
            if not ok:
                index = chunk.items[k][0]
                error = TypeError(f"result of task {index} could not be unpickled: {value!r}")
                value = error
            if w.timed_out is not None and w.timed_out == (chunk, k):
                pass  # already failed with TaskTimeout
            elif not job._cancelled:
                job._out.append((chunk.items[k][0], ok, value))
            if k + 1 == len(chunk.items):
                self._chunk_done(w, chunk, seconds, k + 1)
            w.task_start = now
        if pos < n:
            w.rbuf = bytearray(mv[pos:])
            rest = n - pos
            if rest >= 4:
                size = unpack_len(data, pos)[0]
                if size >= 0:
                    w.rneed = 4 + size
                elif rest >= 12:
                    w.rneed = 12 + _unpack_long(data, pos + 4)[0]
        mv.release()

    def _parse_many(self, w: _Worker, payload: memoryview, now: float) -> None:
        """``TAG_OK_MANY``: the outcomes a worker held, as one message."""
        seconds, count, epoch = _unpack_many(payload, 0)
        w.last_epoch = epoch
        chunk_seconds = None if seconds != seconds else seconds  # NaN: the chunk goes on
        self._take_held(w, payload[_MANY_SIZE:], count, chunk_seconds, now)

    def _take_held(
        self, w: _Worker, records: memoryview, count: int, seconds: float | None, now: float
    ) -> None:
        """``count`` records: the values of the next tasks of ``w``'s stream, all of one
        chunk (a worker sends its held outcomes at the end of each chunk)."""
        chunk = w.inflight[0]
        k = chunk.done
        end = k + count
        items = chunk.items
        job = chunk.job
        timed_out = w.timed_out
        if timed_out is not None and timed_out[0] is not chunk:
            timed_out = None
        keep = not job._cancelled
        out = job._out
        loads = _loads
        pos = 0
        for j in range(k, end):
            n = _unpack_record(records, pos)[0]
            start = pos + _REC
            pos = start + n
            if not keep or (timed_out is not None and j == timed_out[1]):
                continue  # nobody wants it, or it failed with TaskTimeout already
            try:
                out.append((items[j][0], True, loads(records[start:pos])))
            except BaseException as exc:
                # It pickled in the worker but does not unpickle here (a class that
                # only the worker can import, say): that task fails, alone.
                index = items[j][0]
                error = TypeError(f"result of task {index} could not be unpickled: {exc!r}")
                out.append((index, False, error))
        chunk.done = end
        w.parsed += count
        if end == len(items):
            self._chunk_done(w, chunk, seconds, end)
        w.task_start = now

    def _recover_held(self, w: _Worker, now: float) -> None:
        """A dead worker's held outcomes that never reached us, read from its journal."""
        mv = w.journal
        epoch, used, count = JOURNAL_HEADER.unpack_from(mv, 0)
        if not count or epoch <= w.last_epoch or not w.inflight:
            return  # nothing held, or that batch arrived by the pipe
        if used > len(mv) - JOURNAL_HEADER.size or count * _REC > used:
            return  # pragma: no cover - a torn header: those tasks run again instead
        remaining = len(w.inflight[0].items) - w.inflight[0].done
        if count > remaining:
            return  # pragma: no cover - the journal and our books disagree
        self._take_held(w, mv[JOURNAL_HEADER.size : JOURNAL_HEADER.size + used], count, None, now)

    def _other(self, w: _Worker, msg: tuple[Any, ...], now: float) -> None:
        kind = msg[0]
        if kind == "error":
            self._outcome(w, False, self._remote_exc(w, msg[2], msg[3]), msg[1], now)
        elif kind == "bad_result":
            self._outcome(w, False, None, msg[1], now, f"could not be pickled: {msg[2]}")
        elif kind == "ready":
            w.ready = True
            self._spawn_failures = 0
            w.pid = msg[1]
            self._update_counts()
        elif kind == "returned":
            self._returned(w, msg[1], msg[2], msg[3], now)
        elif kind == "unloadable":
            self._unloadable_chunk(w, msg[1], self._remote_exc(w, msg[2], msg[3]), now)

    def _outcome(
        self,
        w: _Worker,
        ok: bool,
        value: object,
        seconds: float | None,
        now: float,
        bad_result: str | None = None,
    ) -> None:
        """The outcome of the current task of ``w`` (the slow path of ``_parse``)."""
        chunk = w.inflight[0]
        k = chunk.done
        chunk.done = k + 1
        w.parsed += 1
        index = chunk.items[k][0]
        job = chunk.job
        if bad_result is not None:
            value = TypeError(f"result of task {index} {bad_result}")
        if w.timed_out is not None and w.timed_out == (chunk, k):
            pass  # already failed with TaskTimeout
        elif not job._cancelled:
            job._out.append((index, ok, value))
        if k + 1 == len(chunk.items):
            self._chunk_done(w, chunk, seconds, k + 1)
        w.task_start = now

    def _remote_exc(self, w: _Worker, exc: BaseException, text: str) -> BaseException:
        with contextlib.suppress(Exception):
            exc.add_note(f"Traceback in worker process (pid {w.pid}):\n{text.rstrip()}")
        return exc

    def _chunk_done(self, w: _Worker, chunk: _Chunk, seconds: float | None, count: int) -> None:
        w.inflight.popleft()
        job = chunk.job
        if seconds is not None and count:
            mean = seconds / count
            job._ewma = mean if job._ewma is None else 0.5 * job._ewma + 0.5 * mean
            # Run-time figures for the lane's stats: per chunk, not per task, so the
            # hot path stays free of them (a chunk's tasks get its mean).
            job.run_count += count
            job.run_total += seconds
            if mean > job.run_max:
                job.run_max = mean
        if not w.inflight:
            job._holders -= 1
            w.job = None

    def _returned(
        self, w: _Worker, chunk_id: int, position: int, seconds: float, now: float
    ) -> None:
        chunk = w.inflight[0]
        assert chunk.id == chunk_id, (chunk.id, chunk_id)
        self._stats["returned"] += 1
        job = chunk.job
        if not job._cancelled:
            job._requeue.extend(chunk.items[position:])
        chunk.items = chunk.items[:position]
        self._chunk_done(w, chunk, seconds if position else None, position)
        w.task_start = now

    def _unloadable_chunk(self, w: _Worker, chunk_id: int, exc: BaseException, now: float) -> None:
        chunk = w.inflight[0]
        assert chunk.id == chunk_id, (chunk.id, chunk_id)
        job = chunk.job
        if not job._cancelled:
            if len(chunk.items) == 1:
                job._out.append((chunk.items[0][0], False, exc))
            else:
                # Which task does not unpickle? Send them one by one to find out.
                job._requeue.extend(chunk.items)
                job._singles += len(chunk.items)
        chunk.items = []
        self._chunk_done(w, chunk, None, 0)
        w.task_start = now

    # -------------------------------------------------------------- writing chunks

    def _write(self, w: _Worker, data: bytes) -> None:
        if w.outbuf:
            w.outbuf += data
            return
        try:
            written = os.write(w.wfd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the worker is gone; its sentinel will tell
        if written < len(data):
            w.outbuf += memoryview(data)[written:]
            assert self._selector is not None
            self._selector.register(w.wfd, selectors.EVENT_WRITE, (1, w))
            w.writing = True

    def _flush(self, w: _Worker) -> None:
        try:
            written = os.write(w.wfd, w.outbuf)
        except BlockingIOError:
            return
        except OSError:
            written = len(w.outbuf)
        del w.outbuf[:written]
        if not w.outbuf:
            self._stop_writing(w)

    def _stop_writing(self, w: _Worker) -> None:
        if w.writing:
            w.writing = False
            assert self._selector is not None
            self._selector.unregister(w.wfd)

    # -------------------------------------------------------------- dispatching

    def _dispatch(self, now: float) -> None:
        jobs = self._jobs
        if not jobs:
            return
        for w in self._workers:
            if w.inflight or not w.ready or w.doomed or w.dead:
                continue
            job = self._next_job()
            if job is None:
                break
            self._send_chunk(w, job, now)
        # Pipelining: with short tasks, a worker that finishes a chunk should find the
        # next one already in its pipe. Only when no job is waiting for a worker, so
        # that fairness between jobs does not suffer.
        for job in jobs:
            if job._queue and job._holders < job._limit and not job._cancelled:
                return
        for w in self._workers:
            job_ = w.job
            if (
                job_ is not None
                and len(w.inflight) == 1
                and not w.doomed
                and job_._queue
                and job_._ewma is not None
                and job_._ewma < PIPELINE_BELOW_SECONDS
                and not job_._cancelled
                and not job_._singles
            ):
                self._send_chunk(w, job_, now)

    def _next_job(self) -> PoolJob | None:
        jobs = self._jobs
        n = len(jobs)
        for i in range(n):
            j = (self._rr + i) % n
            job = jobs[j]
            if job._queue and job._holders < job._limit and not job._cancelled:
                self._rr = (j + 1) % n
                return job
        return None

    def _chunk_size(self, job: PoolJob) -> int:
        if job._singles:
            job._singles -= 1
            return 1
        ewma = job._ewma
        if ewma is None:
            return 1  # nothing measured yet: a long task must not hold others back
        size = min(_size_for(ewma), job._max_size * 4)
        # Leave some for the other workers the job may use, so that the tail of a
        # batch spreads out instead of landing on one worker.
        slots = min(job._limit, self._max_workers)
        share = -(-len(job._queue) // slots)
        size = max(1, min(size, share))
        if size > job._max_size:
            job._max_size = size
        return size

    def _send_chunk(self, w: _Worker, job: PoolJob, now: float) -> None:
        q = job._queue
        while q:
            size = min(self._chunk_size(job), len(q))
            popleft = q.popleft
            items = [popleft() for _ in range(size)]
            payload = self._pickle_chunk(job, items)
            if payload is not None:
                break
        else:
            return
        chunk_id = self._next_chunk_id
        self._next_chunk_id = chunk_id + 1
        chunk = _Chunk(chunk_id, job, items)
        if not w.inflight:
            w.task_start = now
            w.job = job
            job._holders += 1
        w.inflight.append(chunk)
        self._stats["chunks"] += 1
        self._stats["tasks"] += len(items)
        header = CHUNK_HEADER.pack(chunk_id, CHUNK_BUDGET_SECONDS)
        self._write(w, frame(header + payload))

    def _pickle_chunk(
        self, job: PoolJob, items: list[tuple[int, Callable[[], object]]]
    ) -> bytes | None:
        """Pickle a chunk as one list (much cheaper per task than one by one).

        If that fails, find the culprits by pickling each task alone: each one fails
        with ``TypeError``, the others are kept in ``items`` (edited in place). None
        if no task is left.
        """
        try:
            return _encode(items)
        except Exception:
            pass
        good = []
        for index, task in items:
            try:
                _dumps(task, _PROTOCOL)
            except Exception as exc:
                error = TypeError(f"task {index} could not be pickled: {exc!r}")
                error.__cause__ = exc
                job._out.append((index, False, error))
            else:
                good.append((index, task))
        items[:] = good
        if not good:
            return None
        try:
            return _encode(items)
        except Exception as exc:
            for index, _ in items:
                job._out.append(
                    (index, False, TypeError(f"task {index} could not be pickled: {exc!r}"))
                )
            items.clear()
            return None

    # -------------------------------------------------------------- deadlines, kills, deaths

    def _check_deadlines(self, now: float) -> None:
        for w in self._workers:
            if w.dead:
                continue
            if w.doomed:
                if w.kill_at is not None and now >= w.kill_at:
                    w.kill_at = None
                    with contextlib.suppress(OSError, ValueError):
                        w.proc.kill()
                continue
            job = w.job
            if job is None or job._timeout is None:
                continue
            offset = self._running_offset(w)
            if offset < 0:
                # Nothing runs right now, so whatever starts next starts later than
                # this: its timeout counts from no earlier than now.
                w.task_start = now
                continue
            started_at = w.slot[1]
            if started_at > w.task_start:
                w.task_start = started_at  # the worker's own word beats our guess
            if now - w.task_start >= job._timeout:
                found = self._locate(w, offset)
                if found is None:  # pragma: no cover - the slot and our books disagree
                    continue
                chunk, k = found
                index = chunk.items[k][0]
                job._out.append((index, False, TaskTimeout(index, job._timeout)))
                w.timed_out = (chunk, k)
                self._stats["timed_out"] += 1
                self._kill(w, "timeout", now)

    @staticmethod
    def _running_offset(w: _Worker) -> int:
        """Which of ``w``'s tasks without an outcome yet is running: 0 for the first,
        more when finished outcomes wait in its buffer; -1 when none runs."""
        return int(w.slot[0]) - w.parsed - 1

    @staticmethod
    def _locate(w: _Worker, offset: int) -> tuple[_Chunk, int] | None:
        """The ``offset``-th task without an outcome among ``w``'s chunks in flight."""
        for chunk in w.inflight:
            remaining = len(chunk.items) - chunk.done
            if offset < remaining:
                return chunk, chunk.done + offset
            offset -= remaining
        return None

    def _kill(self, w: _Worker, reason: str, now: float) -> None:
        w.doomed = True
        w.reason = reason
        w.kill_at = now + KILL_GRACE_SECONDS
        self._stats["killed"] += 1
        with contextlib.suppress(OSError, ValueError):
            w.proc.terminate()
        self._update_counts()

    def _on_exit(self, w: _Worker, now: float) -> None:
        """A worker's sentinel fired: it is dead. Settle the tasks it held."""
        assert self._selector is not None
        self._selector.unregister(w.sentinel)
        w.dead = True
        self._drain(w, now)
        self._recover_held(w, now)
        self._stop_writing(w)
        w.proc.join(0.5)  # reaps it; immediate, since the sentinel fired
        exitcode = w.proc.exitcode
        crashed = not w.doomed
        if crashed and (w.inflight or not w.ready):
            self._stats["crashed"] += 1
        if crashed and not w.ready and not self._closing:
            self._spawn_failures += 1
            self._spawn_error = RuntimeError(
                f"a worker process exited (code {exitcode}) before it was ready"
            )
        # The task that was running takes the blame for a crash; every task after it
        # runs again elsewhere. (Outcomes it held were read from its journal above, so
        # the running task is normally the first without an outcome. If none was
        # running, the worker died between tasks, or loading a chunk: the first task
        # without an outcome takes the blame, so that a chunk that kills every worker
        # cannot loop forever.)
        blame = max(self._running_offset(w), 0)
        position = 0
        for chunk in w.inflight:
            job = chunk.job
            for k in range(chunk.done, len(chunk.items)):
                index, task = chunk.items[k]
                here = position
                position += 1
                if w.timed_out is not None and w.timed_out == (chunk, k):
                    if job.on_gone is not None:
                        job.on_gone(index)
                    continue
                if job._cancelled:
                    continue
                if here == blame and crashed:
                    job._out.append((index, False, WorkerCrashed(index, exitcode)))
                else:
                    job._requeue.append((index, task))
        w.inflight.clear()
        if w.job is not None:
            w.job._holders -= 1
            w.job = None
        self._workers.remove(w)
        self._close_worker(w)
        self._update_counts()

    def _close_worker(self, w: _Worker) -> None:
        for conn in (w.wconn, w.rconn):
            with contextlib.suppress(OSError):
                conn.close()
        w.slot.release()
        w.journal.release()
        w.block.close()
        # ValueError: still running (only at shutdown, if even SIGKILL failed).
        with contextlib.suppress(ValueError):
            w.proc.close()

    def _requeue_and_spawn(self, now: float) -> None:
        for job in self._jobs:
            if job._requeue:
                job._queue.extendleft(reversed(job._requeue))
                job._requeue.clear()
        if self._spawn_failures >= SPAWN_GIVE_UP:
            self._give_up_waiting_tasks()
            return
        if self._spawn_retry_at is not None:
            if now < self._spawn_retry_at:
                return
            self._spawn_retry_at = None
        alive = sum(1 for w in self._workers if not w.doomed and not w.dead)
        missing = self._max_workers - alive - self._spawning
        if missing > 0:
            for _ in range(missing):
                self._spawn_queue.put(True)
            self._spawning += missing
            self._update_counts()

    def _give_up_waiting_tasks(self) -> None:
        """Workers cannot be started: fail every task that waits for one (while a live
        worker remains, it serves them instead). No new start is tried until a new job
        opens."""
        if any(not w.doomed and not w.dead for w in self._workers):
            return
        cause = self._spawn_error
        for job in self._jobs:
            if job._cancelled or not job._queue:
                continue
            while job._queue:
                index, _ = job._queue.popleft()
                error = RuntimeError(
                    f"task {index} did not run: tasklanes could not start a worker process "
                    f"({self._spawn_failures} attempts in a row failed; last: {cause!r}). "
                    "If this runs from a script, put the code that starts the work under "
                    "'if __name__ == \"__main__\":' -- worker processes import the main "
                    "module."
                )
                error.__cause__ = cause
                job._out.append((index, False, error))

    def _deliver_and_settle(self) -> None:
        settled = False
        for job in self._jobs:
            out = job._out
            if out:
                job._out = []
                job._delivered += len(out)
                try:
                    job._deliver(out)
                except BaseException:
                    sys.stderr.write("tasklanes: a pool job's deliver callback raised:\n")
                    traceback.print_exc()
            if job._cancelled:
                if job._holders == 0:
                    job._settled = settled = True
            elif (
                job._input_closed
                and job._delivered == job._put
                and not job._queue
                and job._holders == 0  # a worker killed for a timeout is gone, too
            ):
                job._settled = settled = True
        if settled:
            done = [job for job in self._jobs if job._settled]
            self._jobs = [job for job in self._jobs if not job._settled]
            self._rr = 0
            self._update_counts()
            for job in done:
                try:
                    job._on_settled()
                except BaseException:
                    sys.stderr.write("tasklanes: a pool job's on_settled callback raised:\n")
                    traceback.print_exc()

    # -------------------------------------------------------------- shutdown

    def _fail_unfinished_jobs(self) -> None:
        """At shutdown: every task of an open job that has no outcome yet fails with
        ``RuntimeError``, and every job settles, so that no caller waits forever on a
        pool that is gone."""
        for job in self._jobs:
            if job._settled:
                continue
            if not job._cancelled:
                unfinished = list(job._requeue) + list(job._queue)
                for w in self._workers:
                    for chunk in w.inflight:
                        if chunk.job is not job:
                            continue
                        for k in range(chunk.done, len(chunk.items)):
                            if w.timed_out is None or w.timed_out != (chunk, k):
                                unfinished.append(chunk.items[k])
                job._out.extend((index, False, closed_error(index)) for index, _ in unfinished)
            job._queue.clear()
            job._requeue.clear()
            out, job._out = job._out, []
            job._delivered += len(out)
            job._settled = True
            try:
                if out and not job._cancelled:
                    job._deliver(out)
                job._on_settled()
            except BaseException:
                sys.stderr.write("tasklanes: a pool job's callback raised at shutdown:\n")
                traceback.print_exc()
        self._jobs = []

    def _shutdown(self) -> None:
        """On the manager thread, as it exits: no worker survives this."""
        self._closing = True
        self._closed = True
        spawner = self._spawner
        if spawner is not None:
            self._spawn_queue.put(False)
            spawner.join()
        while self._commands:
            name, arg = self._commands.popleft()
            if name == "worker":
                self._workers.append(arg)  # not registered for events: only stopped below
            else:
                self._handle_command(name, arg, monotonic())
        # Closing the alive pipe makes idle workers exit on their own; SIGTERM the rest.
        if self._alive_w >= 0:
            os.close(self._alive_w)
            self._alive_w = -1
        for w in self._workers:
            if not w.dead:
                with contextlib.suppress(OSError, ValueError):
                    w.proc.terminate()
        deadline = monotonic() + KILL_GRACE_SECONDS
        for w in self._workers:
            if not w.dead:
                w.proc.join(max(0.0, deadline - monotonic()))
        for w in self._workers:
            if not w.dead and w.proc.exitcode is None:
                with contextlib.suppress(OSError, ValueError):
                    w.proc.kill()
                w.proc.join(5.0)
        # Outcomes that reached the pipes or the journals before the end still count.
        now = monotonic()
        for w in self._workers:
            if w.inflight:
                with contextlib.suppress(Exception):
                    self._drain(w, now)
                    self._recover_held(w, now)
        self._fail_unfinished_jobs()
        for w in self._workers:
            w.dead = True
            self._close_worker(w)
        self._workers.clear()
        self._pids = []
        self._update_counts()
        if self._selector is not None:
            self._selector.close()
        # Forget the fds before closing them: a late put() must not write to a reused fd.
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if self._alive_r is not None:
            self._alive_r.close()
