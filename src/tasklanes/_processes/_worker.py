"""The code that runs inside each worker process of the pool.

A worker reads chunks of tasks from its task pipe, runs them in order, and writes one
message per task the moment the task is done -- before it starts the next one. That
is what lets the parent name the task that was running when a worker dies: after
draining the result pipe, it is the first task of the worker's stream without an
outcome.

A chunk comes with a time budget. When a chunk has run past its budget and tasks
remain, the worker hands the unstarted ones back (along with any chunk queued behind
it), so that a long task never keeps short ones waiting while another worker idles.

Keep this module import-light: the forkserver preloads it, and every import here is
paid by every worker started with the spawn method.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from time import perf_counter

from ._protocol import (
    CHUNK_HEADER,
    ERROR,
    OK,
    READY,
    RETURNED,
    UNLOADABLE,
    RemoteError,
    frame,
)

__all__ = ["main"]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def main(tasks: Connection, results: Connection, alive: Connection) -> None:
    """The worker's whole life: runs until ``STOP``, end of file on ``tasks``, or the
    parent's death (end of file on ``alive``).

    ``tasks`` carries chunks from the parent, ``results`` carries messages back (written
    with raw ``os.write`` calls: one system call per message, nothing buffered, so a
    crash never loses a finished task's outcome). ``alive`` is a pipe whose write end
    only the parent holds: a watchdog thread exits the process when it reads end of
    file, which catches a parent that died while a long task runs.
    """
    # Ctrl-C goes to the whole foreground process group; the parent decides what
    # happens to running tasks (it kills us if it wants them stopped).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = os.getpid()
    _start_watchdog(alive.fileno())
    out = results.fileno()
    recv = tasks.recv_bytes
    poll = tasks.poll
    header_size = CHUNK_HEADER.size
    unpack_header = CHUNK_HEADER.unpack_from
    dumps = _dumps

    _send(out, dumps((READY, pid), _PROTOCOL))
    while True:
        try:
            raw = recv()
        except (EOFError, OSError):
            return
        if not raw:  # STOP
            return
        chunk_id, budget = unpack_header(raw)
        try:
            items = _loads(memoryview(raw)[header_size:])
        except BaseException as exc:
            _send(out, _error_payload(UNLOADABLE, chunk_id, exc))
            continue
        del raw
        started = perf_counter()
        n = len(items)
        for k in range(n):
            index, fn = items[k]
            # Drop our reference so that a big task is freed as soon as it is done.
            items[k] = None
            t0 = perf_counter()
            try:
                value = fn()
            except BaseException as exc:
                t1 = perf_counter()
                payload = _error_payload(ERROR, t1 - t0, exc)
            else:
                t1 = perf_counter()
                try:
                    payload = dumps((OK, t1 - t0, value), _PROTOCOL)
                except BaseException as exc:
                    error = TypeError(f"result of task {index} could not be pickled: {exc!r}")
                    payload = _error_payload(ERROR, t1 - t0, error)
                value = None
            del fn
            if os.getpid() != pid:
                # The task forked and the child returned into our loop: it must not
                # act as the worker (write to our pipes, run our tasks).
                os._exit(0)
            _send(out, payload)
            if t1 - started > budget and (k + 1 < n or poll(0)):
                # Over budget: give back what we have not started, so that idle
                # workers can take it, then go back to reading.
                if k + 1 < n:
                    _send(out, dumps((RETURNED, chunk_id, k + 1), _PROTOCOL))
                if _return_queued(recv, poll, out):
                    return
                break
        del items


def _return_queued(recv: Callable[[], bytes], poll: Callable[[float], bool], out: int) -> bool:
    """Hand back every chunk already waiting in the task pipe, unstarted. True if a
    ``STOP`` was among them."""
    stop = False
    try:
        while poll(0):
            raw = recv()
            if not raw:
                stop = True
                continue
            chunk_id, _ = CHUNK_HEADER.unpack_from(raw)
            _send(out, _dumps((RETURNED, chunk_id, 0), _PROTOCOL))
    except (EOFError, OSError):
        return True
    return stop


def _error_payload(tag: int, first: object, exc: BaseException) -> bytes:
    """A message carrying ``exc`` and its formatted traceback.

    Some exceptions pickle but cannot be rebuilt (an ``__init__`` with extra required
    arguments), so we try the round trip here, where a failure is cheap to handle,
    and send a :class:`RemoteError` stand-in when it fails.
    """
    import traceback  # only paid when a task fails

    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # skip the frame of our own loop
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        text = f"{type(exc).__name__} (traceback could not be formatted)\n"
    try:
        payload = _dumps((tag, first, exc, text), _PROTOCOL)
        _loads(payload)
        return payload
    except BaseException:
        pass
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException:
        message = "<str() failed>"
    stand_in = RemoteError(f"{cls.__module__}.{cls.__qualname__}", message)
    return _dumps((tag, first, stand_in, text), _PROTOCOL)


def _send(fd: int, payload: bytes) -> None:
    """Write one framed message, all of it, or exit if the parent is gone."""
    data: bytes | memoryview = frame(payload) if len(payload) < 65536 else memoryview(
        frame(payload)
    )
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except OSError:
        # Broken pipe: the parent closed its end (it is gone or is closing).
        os._exit(1)


def _start_watchdog(fd: int) -> None:
    import threading  # already imported by multiprocessing: free

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="tasklanes-watchdog", daemon=True).start()

