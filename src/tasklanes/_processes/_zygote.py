"""The zygote: the default way the pool starts workers, when it is safe.

A worker started by `forkserver` or `spawn` pays for a new interpreter that imports
the program's main script again (and what it imports) before the first task can run:
most of a one-shot script's time. Forking the program itself is fast but unsafe once
threads run (a lock held by another thread stays held for ever in the child), and a
worker forked late would see another program than one forked early.

So when a pool starts in a process that runs one thread only (the OS's count, from
`/proc/self/status`: C libraries start threads that Python does not know of), it
forks one *zygote* at once, before its own threads start: a copy of the program as it
is at that moment, which then forks every worker of the pool on request, the first
ones and every replacement (after a crash, a timeout kill, a recycle) alike. It is a
forkserver without the new interpreter and the re-import: a worker starts in a few
milliseconds, sees the program as it was when the pool started, and never inherits a
lock held by another thread, because there was none. When threads run, or off Linux,
or inside a trio run (trio keeps its run state in the thread, and a forked child would
believe it runs trio too), the pool uses `_context.default_context()` instead.

What a worker holds, whichever way the zygote forked it: the program's modules and
objects as they were when the pool started; standard input, output and error; its own
pipes. Every other descriptor it inherited (the program's files, sockets, event-loop
pipes) is replaced by `/dev/null`, opened read-only, as the zygote starts: a connection
the program closes later is really closed (no worker holds it open), the numbers stay
taken (nothing of the worker's lands on a number an old Python object still names),
and a stale object that writes fails loudly. Signal handlers the program installed are
reset to the defaults; Ctrl-C (SIGINT) is ignored, as in every worker.

The protocol, as in CPython's `multiprocessing.forkserver`: the pool sends the
worker's descriptors over a Unix socket (`socket.send_fds`); the zygote forks, writes
the child's pid to a status pipe whose read end the pool keeps as the worker's
*sentinel*, and, once the child exits (a `pidfd` says when), its exit code, then
closes the pipe. The zygote ends when the pool closes the socket (or dies) and its
children are gone.

Only the spawner thread (`_spawner`) and the pool's shutdown call into it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ._log import log

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ._shared import SharedBlock

__all__ = ["Zygote", "ZygoteChild", "can_fork_zygote"]

_PID = struct.Struct("q")
_REQUEST = struct.Struct("Q")  # the shared block's size
_CLOSE_SECONDS = 5.0


def can_fork_zygote() -> bool:
    """Whether a zygote may be forked here, now: Linux (pidfds), one OS thread in
    this process, and no trio run in this thread."""
    if not sys.platform.startswith("linux"):
        return False
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
        return False  # pragma: no cover - Python >= 3.11 on Linux has both
    if threading.active_count() != 1 or not _one_os_thread():
        return False
    return not _in_trio_run()


#: Threads that Python has joined leave the OS's count a moment later (a Scheduler
#: closed just before). While the count keeps falling we wait for it, this long at
#: most after each fall and `_SETTLE_MAX` in all; a thread that stays (a C library's)
#: costs one `_SETTLE_PATIENCE` before the forkserver, which costs far more to start.
_SETTLE_PATIENCE = 0.005
_SETTLE_MAX = 0.05


def _one_os_thread() -> bool:
    n = _os_threads()
    if n == 1:
        return True
    now = time.monotonic()
    give_up = now + _SETTLE_MAX
    patience = now + _SETTLE_PATIENCE
    pause = 0.0002
    while n > 1 and now < min(give_up, patience):
        time.sleep(pause)
        pause = min(pause * 2, 0.002)
        fewer = _os_threads()
        now = time.monotonic()
        if fewer < n:
            patience = now + _SETTLE_PATIENCE
        n = fewer
    return n == 1


def _os_threads() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _in_trio_run() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class Zygote:
    """The parent's handle on one zygote process (see the module doc).

    [fork][tasklanes._processes._zygote.Zygote.fork] makes one (call it only when
    [can_fork_zygote][tasklanes._processes._zygote.can_fork_zygote] says so);
    [start_worker][tasklanes._processes._zygote.Zygote.start_worker] asks it for a
    worker; [close][tasklanes._processes._zygote.Zygote.close] ends it once the
    workers are gone.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False
        self._reaped = False

    @classmethod
    def fork(cls) -> Zygote:
        """Fork the zygote from this (single-threaded) process."""
        for stream in (sys.stdout, sys.stderr):
            # Not flushed, a buffered line would be written again by every worker.
            with contextlib.suppress(Exception):
                stream.flush()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # pragma: no cover - the zygote; coverage does not follow forks
            code = 70
            try:
                ours.close()
                code = _zygote_main(theirs)
            except BaseException:
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def start_worker(
        self,
        tasks: Connection,
        results: Connection,
        alive: Connection,
        block: SharedBlock,
    ) -> ZygoteChild:
        """Ask the zygote for a worker that runs `_worker.main` on these ends and this
        block; blocks until it has forked one. `RuntimeError` if the zygote is gone."""
        status_r, status_w = os.pipe()
        try:
            fds = [tasks.fileno(), results.fileno(), alive.fileno(), block.fileno(), status_w]
            with self._lock:
                if self._closed:
                    raise RuntimeError("the process pool is closed")
                try:
                    socket.send_fds(self._sock, [_REQUEST.pack(block.size)], fds)
                except OSError as exc:
                    raise RuntimeError(f"the pool's zygote process is gone ({exc})") from None
            os.close(status_w)
            status_w = -1
            data = _read_exactly(status_r, _PID.size)
            if len(data) != _PID.size:
                raise RuntimeError("the pool's zygote process is gone")
        except BaseException:
            os.close(status_r)
            if status_w >= 0:
                os.close(status_w)
            raise
        return ZygoteChild(_PID.unpack(data)[0], status_r)

    def stop(self) -> None:
        """Start no more workers: the zygote exits as soon as the workers it forked are
        gone (the pool stops them next; `close` waits for it). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._sock.close()

    def close(self) -> None:
        """`stop`, then wait for the zygote to exit, at most a few seconds (then kill
        it). Call it once the pool's workers are gone."""
        self.stop()
        if self._reaped:
            return
        self._reaped = True
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # pragma: no cover - already reaped
            return
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(pidfd, selectors.EVENT_READ)
                if not sel.select(_CLOSE_SECONDS):
                    log.error("the pool's zygote process %d did not exit; killed", self.pid)
                    with contextlib.suppress(OSError):
                        os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        finally:
            os.close(pidfd)


class ZygoteChild:
    """A worker forked by the zygote, as the pool sees a `multiprocessing.Process`:
    `pid`, `sentinel`, `exitcode`, `join`, `terminate`, `kill`, `close`.

    It is the zygote's child, not ours: its exit code comes through the status pipe
    (`sentinel`), which the zygote writes and closes once it has reaped the child
    (255 if the zygote died first, as with CPython's forkserver).
    """

    __slots__ = ("_exitcode", "pid", "sentinel")

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self._exitcode: int | None = None

    @property
    def exitcode(self) -> int | None:
        return self._poll(0.0)

    def is_alive(self) -> bool:
        return self._poll(0.0) is None

    def join(self, timeout: float | None = None) -> None:
        self._poll(timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self.sentinel < 0:
            return
        if self._poll(0.0) is None:
            raise ValueError("Cannot close a process while it is still running")
        os.close(self.sentinel)
        self.sentinel = -1

    def _signal(self, sig: int) -> None:
        if self._poll(0.0) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _poll(self, timeout: float | None) -> int | None:
        if self._exitcode is not None or self.sentinel < 0:
            return self._exitcode
        from multiprocessing.connection import wait

        if not wait([self.sentinel], timeout):
            return None
        data = _read_exactly(self.sentinel, _PID.size)
        self._exitcode = _PID.unpack(data)[0] if len(data) == _PID.size else 255
        return self._exitcode


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            break
        data += more
    return data


# ---------------------------------------------------------------------- in the zygote


def _zygote_main(sock: socket.socket) -> int:  # pragma: no cover - runs in the zygote
    _become_quiet(sock.fileno())
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status_w)
    serving = True
    while serving or children:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    message, fds, _flags, _addr = socket.recv_fds(sock, _REQUEST.size, 5)
                except OSError:
                    message, fds = b"", []
                if len(message) != _REQUEST.size or len(fds) != 5:
                    for fd in fds:
                        os.close(fd)
                    sel.unregister(sock)  # the pool closed us (or died): no more workers
                    serving = False
                    continue
                _fork_worker(sock, sel, children, fds, _REQUEST.unpack(message)[0])
            else:
                pid, status_w = children.pop(key.fd)
                sel.unregister(key.fd)
                os.close(key.fd)
                try:
                    _, status = os.waitpid(pid, 0)
                    code = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    code = 255
                with contextlib.suppress(OSError):
                    os.write(status_w, _PID.pack(code))
                os.close(status_w)
    return 0


def _fork_worker(
    sock: socket.socket,
    sel: selectors.BaseSelector,
    children: dict[int, tuple[int, int]],
    fds: list[int],
    block_size: int,
) -> None:  # pragma: no cover - runs in the zygote
    *worker_fds, status_w = fds
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sock.close()
            sel.close()
            for pidfd, (_, other_status) in children.items():
                os.close(pidfd)
                os.close(other_status)
            os.close(status_w)
            code = _run_worker(worker_fds, block_size)
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(code)
    for fd in worker_fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = (pid, status_w)
    sel.register(pidfd, selectors.EVENT_READ, pid)
    with contextlib.suppress(OSError):
        os.write(status_w, _PID.pack(pid))


def _become_quiet(keep: int) -> None:  # pragma: no cover - runs in the zygote
    """Make this copy of the program a clean zygote (see the module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig == signal.SIGINT:
            continue
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in (keep, devnull):
            continue
        try:
            os.fstat(fd)  # the directory listing's own descriptor is gone by now
        except OSError:
            continue
        os.dup2(devnull, fd)
    os.close(devnull)
    # The program's process-wide Scheduler (its lanes, their threads and pools) stays
    # with the program: a task that uses tasklanes gets a fresh one.
    scheduler = sys.modules.get("tasklanes._scheduler")
    if scheduler is not None:
        scheduler._default = None  # type: ignore[attr-defined]


def _run_worker(fds: list[int], block_size: int) -> int:  # pragma: no cover - in a worker
    import mmap
    import multiprocessing
    from multiprocessing.connection import Connection

    from . import _worker
    from ._context import WORKER_NAME

    task_r, result_w, alive_r, block_fd = fds
    try:
        block = mmap.mmap(block_fd, block_size)
    finally:
        os.close(block_fd)
    # What a worker started by multiprocessing is: daemonic, named (nested batches
    # and the __main__-guard check look at this).
    current: Any = multiprocessing.current_process()
    current.name = WORKER_NAME
    try:
        current.daemon = True
    except AssertionError:  # the program is itself a multiprocessing child
        current._config["daemon"] = True
    _worker.main(
        Connection(task_r, writable=False),
        Connection(result_w, readable=False),
        Connection(alive_r, writable=False),
        block,
    )
    return 0
