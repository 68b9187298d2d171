"""The code that runs inside each worker process of the pool.

A worker reads chunks of tasks from its task pipe, runs them in order, and sends each
task's outcome back. Quick successes are held for up to ``FLUSH_SECONDS`` and sent
together (one write, and one wake-up of the parent, for many tasks: most of the cost
of a tiny task);
a failure, the end of a chunk, or a task that ran long sends at once. Before each
task of a job with a per-task timeout the worker publishes how many tasks it has
started, and when, in a shared slot: what lets the parent time that task and name it
when it overruns. A worker that dies is blamed on the first task without an outcome,
once its pipe and journal are read. Held outcomes are written to a journal in shared memory as
they finish, so a worker that dies before sending them loses none: the parent reads
them from the journal.

A chunk comes with a time budget. When a chunk has run past its budget and tasks
remain, the worker hands the unstarted ones back (along with any chunk queued behind
it), so that a long task never keeps short ones waiting while another worker idles.

Keep this module import-light: the forkserver preloads it, and every import here is
paid by every worker started with the spawn method.

One file past 500 lines on purpose: it is all a worker process imports (one module
for the forkserver to preload), and its main loop is one function so that its hot
path reads locals only.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from time import monotonic, thread_time
from typing import Any

from ._protocol import (
    CHUNK_HEADER,
    CHUNK_TIMED,
    FRAME_HEADER,
    FRAME_HEADER_LONG,
    JOURNAL_FLOATS,
    JOURNAL_HEADER,
    JOURNAL_INTS,
    JOURNAL_RECORDS,
    MANY_HEADER,
    RECORD_LEN,
    SECONDS,
    TAG_OK,
    TAG_OK_ARRAY,
    TAG_OK_LAST,
    TAG_OK_LIST,
    TAG_OK_MANY,
    TAG_OTHER,
    RemoteError,
    frame,
)
from ._shared import SLOT_BYTES

__all__ = ["main"]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_OK = bytes([TAG_OK])
_OK_LAST = bytes([TAG_OK_LAST])
_OTHER = bytes([TAG_OTHER])
_OK_MANY = bytes([TAG_OK_MANY])
_OK_LIST = bytes([TAG_OK_LIST])
_OK_ARRAY = bytes([TAG_OK_ARRAY])
# Values that may travel pickled together as one list (``TAG_OK_LIST``): immutable, so
# that sharing one pickle's memo between tasks' values changes nothing the caller sees.
_PLAIN = frozenset({int, float, bool, type(None), str, bytes, complex})
_UNKNOWN = object()  # `_Journal.add` without the value: send records
_HELD = object()  # a task's int result, stored in the journal by the tight loop already
_NAN = float("nan")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_HEAD = JOURNAL_HEADER.size
_REC = RECORD_LEN.size
_pack_rec = RECORD_LEN.pack
# Hold a quick task's outcome at most this long, and at most this many of them.
FLUSH_SECONDS = 0.0005
FLUSH_COUNT = 1024
# Non-empty in a process forked from a worker (by a task): set by the at-fork hook
# that `main` registers (in the worker only, not in the parent that imports us).
_forked: list[bool] = []


def main(tasks: Connection, results: Connection, alive: Connection, block: mmap.mmap) -> None:
    """The worker's whole life: runs until end of file on ``tasks``, or the
    parent's death (end of file on ``alive``).

    ``tasks`` carries chunks from the parent, ``results`` carries messages back (written
    with raw ``os.write`` calls). ``block`` is memory shared with the parent: its slot,
    two doubles where, for a job with a per-task timeout (a chunk flagged
    ``CHUNK_TIMED``), we store each task's start time, then how many tasks we have
    started, before we run it, so the parent knows which task runs and since when even
    while finished outcomes wait here; and the journal, where those held outcomes are written, so
    that the parent finds them if we die before we send them (see ``_protocol``). ``alive``
    is a pipe whose write end only the parent holds: a watchdog thread exits the
    process when it reads end of file, which catches a parent that died while a long
    task runs.
    """
    # Ctrl-C goes to the whole foreground process group; the parent decides what
    # happens to running tasks (it kills us if it wants them stopped).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = os.getpid()
    os.register_at_fork(after_in_child=lambda: _forked.append(True))
    _start_watchdog(alive.fileno())
    out = results.fileno()
    recv = tasks.recv_bytes
    poll = tasks.poll
    header_size = CHUNK_HEADER.size
    unpack_header = CHUNK_HEADER.unpack_from
    write = os.write
    pack_len = FRAME_HEADER.pack
    pack_seconds = SECONDS.pack
    dumps = _dumps
    slot = memoryview(block)[:SLOT_BYTES].cast("d")
    held = _Journal(memoryview(block)[SLOT_BYTES:], out)
    add_number = held.add_number
    ints = held.ints  # the journal's records area as int64 items, and its header
    head = held.head
    clock = monotonic
    cpu_clock = thread_time
    begun = 0  # tasks started in this process's life, published in ``slot[0]``
    forked = _forked
    big: bytes | None = None  # a value's pickle too big to hold, sent after `payload`

    _send_other(out, ("ready", pid))
    while True:
        try:
            raw = recv()
        except (EOFError, OSError):
            return
        chunk_id, budget, flags = unpack_header(raw)
        try:
            loaded = _loads(memoryview(raw)[header_size:])
            fn, seq = loaded[0], loaded[1]
        except BaseException as exc:
            _send_other(out, _with_traceback(("unloadable", chunk_id), exc))
            continue
        del raw
        # One call per task, `fn(item)`: a bare chunk's items are the arguments
        # themselves; a chunk of tasks runs each through `_run_task`.
        if fn is None:
            fn = _run_task
            bare = True
        else:
            bare = len(loaded) > 2
        del loaded
        # Publish each task's start in the slot only for a job with a per-task
        # timeout (the parent's deadline counts from it). Without one, a crash is
        # pinned on the first task without an outcome (see `_reaper`): we count the
        # chunk's tasks here and publish nothing per task.
        timed = flags & CHUNK_TIMED
        # The tight loop below (quick int successes held one after another) serves a
        # chunk without a per-task timeout (nothing to publish per task), while the
        # journal holds ints.
        quick = not timed
        begun_before = begun
        started = clock()
        cpu_started = cpu_clock()
        over_at = started + budget
        last = len(seq) - 1
        now = started
        k = -1
        while k < last:
            k += 1
            if timed:
                # Publish the start before running: time first, so that a parent
                # reading the count sees a start time at least as recent as that task's.
                slot[1] = now
                slot[0] = begun_before + k + 1
            begin = now
            task = seq[k]
            # Drop our reference so that a big task is freed as soon as it is done.
            seq[k] = None
            payload: bytes | None
            try:
                value = fn(task) if bare else fn(*task)
                if quick and held.form == JOURNAL_INTS:
                    # The common case of trivial tasks, in a tight loop: each int result
                    # goes into the journal's array (so a crash loses none), then the
                    # next task runs at once, until a result is not an int, a task
                    # raises (both: handled below as task `k`'s, as ever), the chunk
                    # ends, or the held outcomes are due to be sent (then `value` is
                    # `_HELD`: stored already; the flush and budget checks below run).
                    while type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
                        now = clock()
                        count = held.count
                        if count >= FLUSH_COUNT:
                            break
                        ints[count] = value
                        if not count:
                            held.since = now
                        held.count = count = count + 1
                        head[2] = count
                        value = _HELD
                        if forked:
                            os._exit(0)  # as below: a forked child leaves our loop
                        if (
                            k == last
                            or now > over_at
                            or now - held.since >= FLUSH_SECONDS
                            or count >= FLUSH_COUNT
                        ):
                            break
                        k += 1
                        begin = now
                        task = seq[k]
                        seq[k] = None
                        value = fn(task) if bare else fn(*task)
            except BaseException as exc:
                now = clock()
                seconds = now - started if k == last else None
                payload = _OTHER + _other_payload(_with_traceback(("error", seconds), exc))
            else:
                payload = None
                if value is not _HELD:  # (else: held by the tight loop, `now` read)
                    now = clock()
                count = held.count
                if value is _HELD:
                    pass
                elif (
                    type(value) is int
                    and held.form == JOURNAL_INTS
                    and count < FLUSH_COUNT
                    and _INT64_MIN <= value <= _INT64_MAX
                ):
                    # The common case of trivial tasks, `held.add_number` inlined: an
                    # int into the journal's array, then the count (it counts once
                    # the item is whole).
                    ints[count] = value
                    if not count:
                        held.since = now
                    held.count = count = count + 1
                    head[2] = count
                else:
                    data: bytes | None
                    try:
                        # An int or a float goes into the journal as is (no pickle).
                        data = None if add_number(value, now) else dumps(value, _PROTOCOL)
                    except BaseException as exc:
                        # A class of a task sent by value: cloudpickle can send it back.
                        data = _result_by_value(value)
                        if data is None:
                            seconds = now - started if k == last else None
                            payload = _OTHER + _other_payload(
                                ("bad_result", seconds, _describe(exc))
                            )
                    if data is not None:
                        if held.add(data, now, value):
                            payload = None  # held: goes with the next flush
                        else:  # too big to hold: goes alone, not copied (`_write_big`)
                            payload = _OK_LAST + pack_seconds(now - started) if k == last else _OK
                            big = data
                        data = b""
                value = None
            task = None
            if forked:
                # The task forked and the child returned into our loop: it must not
                # act as the worker (write to our pipes, run our tasks). A list
                # tested for emptiness, not `os.getpid()` per task: a syscall.
                os._exit(0)
            give_back = (
                now - started > budget
                and (k < last or poll(0))
                and _really_over(now - started, now - begin, cpu_clock() - cpu_started, budget)
            )
            if (
                payload is None
                and k < last
                and not give_back
                # `held.due(now)`, inlined: this runs once per task.
                and now - held.since < FLUSH_SECONDS
                and held.count < FLUSH_COUNT
            ):
                continue  # a quick success: keep it with the others for now
            queued: list[int] = []
            stop = False
            if give_back:
                # Over budget: hand back what we have not started, so that idle
                # workers can take it. Chunks already queued in our pipe go back too;
                # we read them *before* sending this outcome, because once the parent
                # has it, it may send us a fresh chunk that we must keep.
                queued, stop = _read_queued(recv, poll)
            if held.count:
                # Held successes go first: outcomes travel in the order tasks ran.
                held.flush(now - started if payload is None and k == last else _NAN)
            if big is not None:
                _write_big(out, payload or b"", big)
                payload = big = None
            if payload is not None:
                n = len(payload)
                if n < 0x10000:
                    # The common case, inlined: one write of header and payload together.
                    frame_bytes = pack_len(n) + payload
                    try:
                        written = write(out, frame_bytes)
                    except OSError:
                        os._exit(1)  # the parent is gone
                    if written != len(frame_bytes):
                        _write_all(out, memoryview(frame_bytes)[written:])
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
        begun = begun_before + k + 1  # tasks started in our life, the slot's count
        del seq, fn


def _run_task(task: Callable[[], Any]) -> Any:
    """Run a task of a chunk that is not bare (mixed functions, keyword arguments)."""
    return task()


class _Journal:
    """Successes held for a moment, written into shared memory as they finish.

    ``add`` appends one pickled outcome (a record) and publishes the new size in the
    header; ``add_number`` stores an ``int`` (64-bit) or a ``float`` as an item of a
    native array instead, while every held value is of that one type (no pickle: the
    common case of trivial tasks). ``flush`` sends what is held in one message --
    ``TAG_OK_ARRAY`` for an array, ``TAG_OK_LIST`` (one pickled list) when every value
    is plain, else ``TAG_OK_MANY`` (the records) -- then opens a new epoch. Should
    this process die in between, the parent reads them from the shared block instead:
    held outcomes are never lost, and never sent twice (the parent skips a journal
    whose epoch's message it already has).
    """

    __slots__ = (
        "count",
        "epoch",
        "floats",
        "form",
        "head",
        "ints",
        "mv",
        "out",
        "since",
        "size",
        "used",
        "values",
    )

    def __init__(self, block: Any, out: int) -> None:
        self.mv = memoryview(block).cast("B")
        self.size = len(self.mv)
        # The header's fields as items (a store is cheaper than a `pack_into`).
        self.head = self.mv[:_HEAD].cast("Q")
        # The records area seen as arrays, for `add_number`.
        cells = self.mv[_HEAD : _HEAD + (self.size - _HEAD) // 8 * 8]
        self.ints = cells.cast("q")
        self.floats = cells.cast("d")
        self.form = JOURNAL_RECORDS
        self.out = out
        self.epoch = 0
        self.used = 0  # bytes of records after the header
        self.count = 0
        self.since = 0.0  # when the oldest held outcome finished
        # The held values themselves while they are all plain (see `_PLAIN`), else None.
        self.values: list[Any] | None = []
        JOURNAL_HEADER.pack_into(self.mv, 0, 0, 0, 0, JOURNAL_RECORDS)

    def add_number(self, value: Any, now: float) -> bool:
        """Hold ``value`` as an array item if it is an ``int`` that fits 64 bits or a
        ``float`` and the values held are of the same type; False otherwise (then
        pickle it and ``add`` it)."""
        kind = type(value)
        if kind is int:
            form = JOURNAL_INTS
        elif kind is float:
            form = JOURNAL_FLOATS
        else:
            return False
        count = self.count
        if form != self.form:
            if count:
                return False  # records or the other type held: one form per epoch
            self.form = form
            self.head[3] = form  # before the count says there is anything to read
        if count >= FLUSH_COUNT:
            return False
        try:
            (self.ints if form == JOURNAL_INTS else self.floats)[count] = value
        except (OverflowError, ValueError):
            return False  # an int past 64 bits: it goes pickled
        if not count:
            self.since = now
        self.count = count + 1
        self.head[2] = count + 1  # the count last: the item counts once it is whole
        return True

    def add(self, data: bytes, now: float, value: Any = _UNKNOWN) -> bool:
        """Hold ``data`` (the pickle of ``value``); False if it is too big for the
        journal (send it alone)."""
        if self.form != JOURNAL_RECORDS:
            if self.count:
                self.flush(_NAN)  # numbers held in an array: send them first
            self.form = JOURNAL_RECORDS
            self.head[3] = JOURNAL_RECORDS
        n = len(data)
        pos = _HEAD + self.used
        end = pos + _REC + n
        if end > self.size:
            if self.count:
                self.flush(_NAN)
            pos = _HEAD
            end = pos + _REC + n
            if end > self.size:
                return False
        self.mv[pos:end] = _pack_rec(n) + data
        if not self.count:
            self.since = now
        self.used = used = end - _HEAD
        self.count = count = self.count + 1
        # The header last, the count last of all: a record counts once it is whole
        # (a reader walks `count` records; `used` ahead of it is harmless).
        head = self.head
        head[1] = used
        head[2] = count
        values = self.values
        if values is not None:
            if type(value) in _PLAIN:
                values.append(value)
            else:
                self.values = None
        return True

    def due(self, now: float) -> bool:
        return now - self.since >= FLUSH_SECONDS or self.count >= FLUSH_COUNT

    def flush(self, seconds: float) -> None:
        """Send the held outcomes; ``seconds``: the chunk's run time if they end it."""
        head = MANY_HEADER.pack(seconds, self.count, self.epoch)
        form = self.form
        values = self.values
        if form != JOURNAL_RECORDS:
            # The array's bytes as they are: the parent casts them back to numbers.
            items = self.mv[_HEAD : _HEAD + 8 * self.count]
            payload = b"".join((_OK_ARRAY, head, bytes((form,)), items))
        elif values is not None:
            # One pickle of the list: the parent unpickles it in one call.
            payload = b"".join((_OK_LIST, head, _dumps(values, _PROTOCOL)))
            values.clear()
        else:
            records = self.mv[_HEAD : _HEAD + self.used]
            payload = b"".join((_OK_MANY, head, records))
            self.values = []
        _write_all(self.out, memoryview(frame(payload)))
        self.epoch += 1
        self.used = 0
        self.count = 0
        JOURNAL_HEADER.pack_into(self.mv, 0, self.epoch, 0, 0, form)


def _really_over(elapsed: float, task_seconds: float, cpu_seconds: float, budget: float) -> bool:
    """Whether a chunk past its wall-clock budget should hand back its rest.

    Only when its tasks are really long: the last task alone took a good part of the
    budget, or the chunk used its budget in CPU time, or it ran ten budgets. A chunk of
    quick tasks that overran only because this process waited for a CPU (a busy
    machine) keeps going: handing it back would gain nothing (the other workers wait
    for the same CPUs) and cost a re-send. This test runs only once a chunk has overrun
    its budget, so the `thread_time` call is off the per-task path.
    """
    return task_seconds >= budget / 2 or cpu_seconds >= budget or elapsed >= 10 * budget


def _read_queued(
    recv: Callable[[], bytes], poll: Callable[[float], bool]
) -> tuple[list[int], bool]:
    """The ids of the chunks already waiting in the task pipe (read, so consumed), and
    whether the pipe was closed behind them (then we exit once they are handed back)."""
    ids: list[int] = []
    stop = False
    try:
        while poll(0):
            ids.append(CHUNK_HEADER.unpack_from(recv())[0])
    except (EOFError, OSError):
        stop = True
    return ids, stop


def _result_by_value(value: object) -> bytes | None:
    from ._pickling import result_by_value  # only paid when a result does not pickle

    return result_by_value(value)


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
    and send a `RemoteError` stand-in when it fails.
    """
    import traceback  # only paid when a task fails

    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # skip the frame of our own loop
        if tb.tb_frame.f_code is _run_task.__code__ and tb.tb_next is not None:
            tb = tb.tb_next  # and of `_run_task`
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        text = f"{type(exc).__name__} (traceback could not be formatted)\n"
    try:
        _loads(_dumps(exc, _PROTOCOL))
        return (*head, exc, text)
    except BaseException:
        pass
    try:
        # An exception class sent by value (defined in a notebook, say) goes back the
        # same way (_other_payload).
        data = _result_by_value(exc)
        if data is not None:
            _loads(data)
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
    try:
        return _dumps(message, _PROTOCOL)
    except BaseException:
        data = _result_by_value(message)  # checked by _with_traceback: it goes by value
        if data is None:
            raise
        return data


def _send_other(fd: int, message: tuple[object, ...]) -> None:
    _write_all(fd, memoryview(frame(_OTHER + _other_payload(message))))


def _write_big(fd: int, head: bytes, data: bytes) -> None:
    """Send one frame: `head` (the tag, and the chunk's run time) then `data` (a large
    pickle), with gathered writes: `data` is not copied to frame it (a concatenation
    would hold two more copies of a big result in the worker while it is sent)."""
    n = len(head) + len(data)
    if n > 0x7FFFFFFF:
        header = FRAME_HEADER.pack(-1) + FRAME_HEADER_LONG.pack(n)
    else:
        header = FRAME_HEADER.pack(n)
    parts = [memoryview(header + head), memoryview(data)]
    try:
        while parts:
            # At most 1 GiB a call: macOS fails a write of more than 2 GiB at once.
            written = os.writev(fd, [part[:0x40000000] for part in parts])
            while parts and written >= len(parts[0]):
                written -= len(parts[0])
                del parts[0]
            if parts and written:
                parts[0] = parts[0][written:]
    except OSError:
        os._exit(1)  # the parent is gone (see `_write_all`)


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
