"""The code that runs inside each worker process of the pool.

A worker reads chunks of tasks from its task pipe, runs them in order, and sends each
task's outcome back. Quick successes are held for up to ``FLUSH_SECONDS`` and sent
together (one pickle and one write for many tasks: most of the cost of a tiny task);
a failure, the end of a chunk, or a task that ran long sends at once. Before each
task the worker publishes how many tasks it has started in a shared slot, which is
what lets the parent name the task that was running when the worker dies or
overruns its timeout. The price of holding outcomes: if the worker dies, the quick
tasks that finished in the last half millisecond lose their outcome and run again
on another worker.

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
from time import monotonic
from typing import Any

from ._protocol import (
    CHUNK_HEADER,
    FRAME_HEADER,
    MANY_HEADER,
    SECONDS,
    TAG_OK,
    TAG_OK_LAST,
    TAG_OK_MANY,
    TAG_OTHER,
    RemoteError,
    frame,
)

__all__ = ["main"]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_OK = bytes([TAG_OK])
_OK_LAST = bytes([TAG_OK_LAST])
_OTHER = bytes([TAG_OTHER])
_OK_MANY = bytes([TAG_OK_MANY])
_NAN = float("nan")
FLUSH_SECONDS = 0.0005
FLUSH_COUNT = 1024


def main(tasks: Connection, results: Connection, alive: Connection, slot: Any) -> None:
    """The worker's whole life: runs until ``STOP``, end of file on ``tasks``, or the
    parent's death (end of file on ``alive``).

    ``tasks`` carries chunks from the parent, ``results`` carries messages back (written
    with raw ``os.write`` calls). ``slot`` is a shared array of two doubles: before each
    task we store its start time, then how many tasks we have started, so the parent
    knows which task runs even while finished outcomes wait in our buffer. ``alive``
    is a pipe whose write end only the parent holds: a watchdog thread exits the
    process when it reads end of file, which catches a parent that died while a long
    task runs.
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
    write = os.write
    pack_len = FRAME_HEADER.pack
    clock = monotonic
    begun = 0  # tasks started in this process's life, published in ``slot[0]``
    getpid = os.getpid

    _send_other(out, ("ready", pid))
    while True:
        try:
            raw = recv()
        except (EOFError, OSError):
            return
        if not raw:  # STOP
            return
        chunk_id, budget = unpack_header(raw)
        try:
            fn, seq = _loads(memoryview(raw)[header_size:])
        except BaseException as exc:
            _send_other(out, _with_traceback(("unloadable", chunk_id), exc))
            continue
        del raw
        started = clock()
        last = len(seq) - 1
        buf: list[object] = []
        buf_since = 0.0
        now = started
        for k in range(last + 1):
            # Publish the start before running: time first, so that a parent reading
            # the count sees a start time at least as recent as that task's.
            slot[1] = now
            begun += 1
            slot[0] = begun
            task = seq[k]
            # Drop our reference so that a big task is freed as soon as it is done.
            seq[k] = None
            try:
                value = task() if fn is None else fn(*task)
            except BaseException as exc:
                now = clock()
                seconds = now - started if k == last else None
                payload = _OTHER + _other_payload(_with_traceback(("error", seconds), exc))
            else:
                now = clock()
                # Coalesce: hold the values of quick tasks for up to FLUSH_SECONDS
                # and send them in one message (one pickle, one write).
                if not buf:
                    buf_since = now
                buf.append(value)
                value = None
                task = None
                if getpid() != pid:
                    os._exit(0)  # a forked child returned into our loop (see below)
                give_back = now - started > budget and (k < last or poll(0))
                if (
                    not give_back
                    and k < last
                    and now - buf_since < FLUSH_SECONDS
                    and len(buf) < FLUSH_COUNT
                ):
                    continue
                queued: list[int] = []
                stop = False
                if give_back:
                    queued, stop = _read_queued(recv, poll)  # before the flush: see below
                _flush(out, buf, now - started if k == last else _NAN)
                buf = []
                if give_back:
                    if k < last:
                        _send_other(out, ("returned", chunk_id, k + 1, now - started))
                    for other in queued:
                        _send_other(out, ("returned", other, 0, 0.0))
                    if stop:
                        return
                    break
                continue
            task = None
            if getpid() != pid:
                # The task forked and the child returned into our loop: it must not
                # act as the worker (write to our pipes, run our tasks).
                os._exit(0)
            if buf:  # the successes before this failure go first, in order
                _flush(out, buf, _NAN)
                buf = []
            give_back = now - started > budget and (k < last or poll(0))
            queued = []
            stop = False
            if give_back:
                # Over budget: hand back what we have not started, so that idle
                # workers can take it. Chunks already queued in our pipe go back too;
                # we read them *before* sending this outcome, because once the parent
                # has it, it may send us a fresh chunk that we must keep.
                queued, stop = _read_queued(recv, poll)
            n = len(payload)
            if n < 0x10000:
                # The common case, inlined: one write of header and payload together.
                data = pack_len(n) + payload
                try:
                    written = write(out, data)
                except OSError:
                    os._exit(1)  # the parent is gone
                if written != len(data):
                    _write_all(out, memoryview(data)[written:])
            else:
                _write_all(out, memoryview(frame(payload)))
            if give_back:
                if k < last:
                    _send_other(out, ("returned", chunk_id, k + 1, now - started))
                for other in queued:
                    _send_other(out, ("returned", other, 0, 0.0))
                if stop:
                    return
                break
        del seq, fn


def _flush(out: int, values: list[object], seconds: float) -> None:
    """Send ``values``, the outcomes of the next ``len(values)`` tasks, all successes;
    ``seconds`` is the chunk's run time when the last of them ends the chunk, else NaN."""
    if len(values) > 1:
        try:
            head = MANY_HEADER.pack(seconds, len(values))
            payload = _OK_MANY + head + _dumps(values, _PROTOCOL)
        except BaseException:
            pass  # one of them does not pickle: send them one by one, so only it fails
        else:
            _write_all(out, memoryview(frame(payload)))
            return
    last = len(values) - 1
    for i, value in enumerate(values):
        end = i == last and seconds == seconds  # not NaN: this one ends the chunk
        try:
            if end:
                one = _OK_LAST + SECONDS.pack(seconds) + _dumps(value, _PROTOCOL)
            else:
                one = _OK + _dumps(value, _PROTOCOL)
        except BaseException as exc:
            message = ("bad_result", seconds if end else None, _describe(exc))
            one = _OTHER + _other_payload(message)
        _write_all(out, memoryview(frame(one)))


def _read_queued(
    recv: Callable[[], bytes], poll: Callable[[float], bool]
) -> tuple[list[int], bool]:
    """The ids of the chunks already waiting in the task pipe (read, so consumed), and
    whether a ``STOP`` was among them."""
    ids: list[int] = []
    stop = False
    try:
        while poll(0):
            raw = recv()
            if raw:
                ids.append(CHUNK_HEADER.unpack_from(raw)[0])
            else:
                stop = True
    except (EOFError, OSError):
        stop = True
    return ids, stop


def _describe(exc: BaseException) -> str:
    try:
        return repr(exc)
    except BaseException:
        return type(exc).__name__


def _with_traceback(head: tuple[object, ...], exc: BaseException) -> tuple[object, ...]:
    """``head + (exc, traceback_text)``, with ``exc`` replaced by a stand-in if it does
    not survive a pickle round trip.

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
        _loads(_dumps(exc, _PROTOCOL))
        return (*head, exc, text)
    except BaseException:
        pass
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException:
        message = "<str() failed>"
    stand_in = RemoteError(f"{cls.__module__}.{cls.__qualname__}", message)
    return (*head, stand_in, text)


def _other_payload(message: tuple[object, ...]) -> bytes:
    return _dumps(message, _PROTOCOL)


def _send_other(fd: int, message: tuple[object, ...]) -> None:
    _write_all(fd, memoryview(frame(_OTHER + _other_payload(message))))


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data``, or exit if the parent is gone."""
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
