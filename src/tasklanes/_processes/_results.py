"""Manager layer: reading what workers send back, and settling each outcome.

Outcomes carry no index: a worker runs its chunks strictly in order, so the next
outcome read from a worker belongs to the first task without one in its oldest chunk
in flight (see `_protocol`).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from .._stats import record
from ._commands import StreamDone
from ._job import Run
from ._log import log
from ._protocol import (
    RECORD_LEN,
    SECONDS,
    TAG_OK,
    TAG_OK_ARRAY,
    TAG_OK_LIST,
    TAG_OK_MANY,
    TAG_OTHER,
)
from ._state import ManagerState
from ._stream import STREAM_ABOVE, STREAMED_TAGS, BigFrameReader
from ._wire import decode_array, decode_many, read_journal
from ._workers import DEAD, READY, RETIRING, STARTING, Chunk, WorkerHandle, rss_bytes

__all__ = ["ResultReader"]

_READ_SIZE = 1 << 20
_loads = pickle.loads
_unpack_seconds = SECONDS.unpack_from
_unpack_record = RECORD_LEN.unpack_from
_REC = RECORD_LEN.size


class ResultReader(ManagerState):
    def _read(self, w: WorkerHandle, now: float) -> None:
        if w.state is DEAD:
            return  # its exit was handled earlier in the same turn
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
        big = w.frames.take_big(STREAM_ABOVE, STREAMED_TAGS)
        if big is not None:
            self._start_stream(w, *big)

    def _drain(self, w: WorkerHandle, now: float) -> None:
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

    def _start_stream(self, w: WorkerHandle, prefix: memoryview, size: int) -> None:
        """A big frame has begun: a reader thread unpickles the rest of it straight
        from the pipe (`_stream`), which we leave alone until it is done
        (`Manager._stream_done`)."""
        reader = BigFrameReader(w, w.rfd, w.sentinel, prefix, size, self._stream_ended)
        # If no thread can be started, this raises out of the manager's loop, whose
        # shutdown then fails every unfinished task: an error, not a hang.
        reader.start()
        self._stop_reading(w)
        self.stats["streamed"] += 1
        w.stream = reader

    def _stream_ended(self, reader: BigFrameReader) -> None:
        # On the reader's thread. If the manager no longer takes commands (it is
        # shutting down), its shutdown settles the reader itself.
        self.submit(StreamDone(reader))

    def _stop_reading(self, w: WorkerHandle) -> None:
        if w.reading:
            w.reading = False
            self.selector.unregister(w.rfd)

    def _parse(self, w: WorkerHandle, data: bytes, now: float) -> None:
        data, spans = w.frames.feed(data)
        if not spans:
            return
        mv = memoryview(data)
        loads = _loads
        inflight = w.inflight
        for start, end in spans:
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
                seconds_or_none, count, epoch, records = decode_many(mv[start + 1 : end])
                w.last_epoch = epoch
                self._take_held(w, records, count, seconds_or_none, now)
                continue
            if tag == TAG_OK_LIST:
                seconds_or_none, count, epoch, pickled = decode_many(mv[start + 1 : end])
                w.last_epoch = epoch
                self._take_list(w, loads(pickled), count, seconds_or_none, now)
                continue
            if tag == TAG_OK_ARRAY:
                seconds_or_none, count, epoch, body = decode_many(mv[start + 1 : end])
                w.last_epoch = epoch
                self._take_list(w, decode_array(body, count), count, seconds_or_none, now)
                continue
            # The hot path: the outcome of the current task of this worker.
            seconds = None
            ok = True
            try:
                if tag == TAG_OK:
                    value = loads(mv[start + 1 : end])
                else:
                    seconds = _unpack_seconds(data, start + 1)[0]
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
                index = chunk.first + k
                value = TypeError(f"result of task {index} could not be unpickled: {value!r}")
            if w.timed_out is not None and w.timed_out == (chunk, k):
                pass  # already failed with TaskTimeout
            elif not job.cancelled:
                job.out.append((chunk.first + k, ok, value))
            if k + 1 == len(chunk.tasks):
                self._chunk_done(w, chunk, seconds, k + 1)
            w.task_start = now
        mv.release()

    def _take_held(
        self, w: WorkerHandle, records: memoryview, count: int, seconds: float | None, now: float
    ) -> None:
        """`count` records: the values of the next tasks of `w`'s stream, all of one
        chunk (a worker sends its held outcomes at the end of each chunk)."""
        chunk = w.inflight[0]
        k = chunk.done
        end = k + count
        if end > len(chunk.tasks):
            raise RuntimeError(
                f"worker {w.pid} sent {count} held outcomes for a chunk with "
                f"{len(chunk.tasks) - k} tasks left"
            )
        first = chunk.first
        job = chunk.job
        timed_out = w.timed_out
        skip = timed_out[1] if timed_out is not None and timed_out[0] is chunk else -1
        keep = not job.cancelled
        out = job.out
        loads = _loads
        # `_wire.iter_records`, inlined: this loop runs once per task.
        unpack_record = _unpack_record
        pos = 0
        for j in range(k, end):
            n = unpack_record(records, pos)[0]
            start = pos + _REC
            pos = start + n
            if not keep or j == skip:
                continue  # nobody wants it, or it failed with TaskTimeout already
            try:
                out.append((first + j, True, loads(records[start:pos])))
            except BaseException as exc:
                # It pickled in the worker but does not unpickle here (a class that
                # only the worker can import, say): that task fails, alone.
                index = first + j
                error = TypeError(f"result of task {index} could not be unpickled: {exc!r}")
                out.append((index, False, error))
        chunk.done = end
        w.parsed += count
        if end == len(chunk.tasks):
            self._chunk_done(w, chunk, seconds, end)
        w.task_start = now

    def _take_list(
        self, w: WorkerHandle, values: list[Any], count: int, seconds: float | None, now: float
    ) -> None:
        """`_take_held` for a `TAG_OK_LIST` or `TAG_OK_ARRAY` message: the values came
        as one list. They go out as one `Run` (two around a task that timed out
        already) for a job that takes runs, else as one outcome each."""
        chunk = w.inflight[0]
        k = chunk.done
        end = k + count
        if end > len(chunk.tasks) or len(values) != count:
            raise RuntimeError(
                f"worker {w.pid} sent {len(values)} held outcomes (count {count}) for a "
                f"chunk with {len(chunk.tasks) - k} tasks left"
            )
        job = chunk.job
        if not job.cancelled:
            first = chunk.first + k
            timed_out = w.timed_out
            skip = timed_out[1] - k if timed_out is not None and timed_out[0] is chunk else -1
            if 0 <= skip < count:  # that one failed with TaskTimeout already
                runs = [Run(first, values[:skip]), Run(first + skip + 1, values[skip + 1 :])]
            else:
                runs = [Run(first, values)]
            out = job.out
            for run in runs:
                if not run.values:
                    continue
                if job.runs:
                    out.append(run)
                else:
                    out.extend(run.outcomes())
        chunk.done = end
        w.parsed += count
        if end == len(chunk.tasks):
            self._chunk_done(w, chunk, seconds, end)
        w.task_start = now

    def _recover_held(self, w: WorkerHandle, now: float) -> None:
        """A dead worker's held outcomes that never reached us, read from its journal."""
        if not w.inflight:
            return
        found = read_journal(w.journal, w.last_epoch)
        if found is None:
            return  # nothing held, that batch arrived by the pipe, or a torn header
        count, held = found
        remaining = len(w.inflight[0].tasks) - w.inflight[0].done
        if count > remaining:
            log.error(
                "a dead worker's journal holds more outcomes than its chunk had tasks; "
                "those tasks run again",
                extra={"lane": "cpu", "pid": w.pid, "count": count, "remaining": remaining},
            )
            return
        if isinstance(held, list):
            self._take_list(w, held, count, None, now)
        else:
            self._take_held(w, held, count, None, now)

    def _other(self, w: WorkerHandle, msg: tuple[Any, ...], now: float) -> None:
        kind = msg[0]
        if kind == "error":
            self._outcome(w, False, self._remote_exc(w, msg[2], msg[3]), msg[1], now)
        elif kind == "bad_result":
            self._outcome(w, False, None, msg[1], now, f"could not be pickled: {msg[2]}")
        elif kind == "ready":
            if w.state is STARTING:
                w.state = READY
            self.spawn_failures = 0
            w.pid = msg[1]
            self._update_counts()
        elif kind == "returned":
            self._returned(w, msg[1], msg[2], msg[3], now)
        elif kind == "unloadable":
            self._unloadable_chunk(w, msg[1], self._remote_exc(w, msg[2], msg[3]), now)
        else:
            raise RuntimeError(f"unknown message from worker {w.pid}: {kind!r}")

    def _outcome(
        self,
        w: WorkerHandle,
        ok: bool,
        value: object,
        seconds: float | None,
        now: float,
        bad_result: str | None = None,
    ) -> None:
        """The outcome of the current task of `w` (the slow path of `_parse`)."""
        chunk = w.inflight[0]
        k = chunk.done
        chunk.done = k + 1
        w.parsed += 1
        index = chunk.first + k
        job = chunk.job
        if bad_result is not None:
            value = TypeError(f"result of task {index} {bad_result}")
        if w.timed_out is not None and w.timed_out == (chunk, k):
            pass  # already failed with TaskTimeout
        elif not job.cancelled:
            job.out.append((index, ok, value))
        if k + 1 == len(chunk.tasks):
            self._chunk_done(w, chunk, seconds, k + 1)
        w.task_start = now

    @staticmethod
    def _remote_exc(w: WorkerHandle, exc: BaseException, text: str) -> BaseException:
        exc.add_note(f"Traceback in worker process (pid {w.pid}):\n{text.rstrip()}")
        return exc

    def _chunk_done(self, w: WorkerHandle, chunk: Chunk, seconds: float | None, count: int) -> None:
        w.inflight.popleft()
        job = chunk.job
        if seconds is not None and count:
            mean = seconds / count
            job.ewma = mean if job.ewma is None else 0.5 * job.ewma + 0.5 * mean
            # Run-time figures for the lane's stats: per chunk, not per task, so the
            # hot path stays free of them (a chunk's tasks get its mean).
            job.run_count += count
            job.run_total += seconds
            if mean > job.run_max:
                job.run_max = mean
            record(job.run_hist, mean, count)  # percentiles, per chunk
        if not w.inflight:
            job.holders -= 1
            w.job = None
        limit = self.max_worker_memory
        if limit is not None and w.state is READY:
            # Checked once per chunk (a read of /proc, some microseconds): a worker
            # past the limit finishes what it holds and is replaced.
            rss = rss_bytes(w.pid)
            if rss is not None and rss > limit:
                w.state = RETIRING
                log.info(
                    "recycling worker process %d: resident memory %d bytes > %d",
                    w.pid,
                    rss,
                    limit,
                    extra={"lane": "cpu", "pid": w.pid, "reason": "memory", "rss": rss},
                )

    def _returned(
        self, w: WorkerHandle, chunk_id: int, position: int, seconds: float, now: float
    ) -> None:
        chunk = w.inflight[0]
        if chunk.id != chunk_id:
            raise RuntimeError(f"worker {w.pid} returned chunk {chunk_id}, not {chunk.id}")
        self.stats["returned"] += 1
        # They will be sent again: count each task once in `tasks`.
        self.stats["tasks"] -= len(chunk.tasks) - position
        job = chunk.job
        if not job.cancelled:
            job.put_back(chunk.first + position, chunk.tasks[position:])
        chunk.tasks = chunk.tasks[:position]
        self._chunk_done(w, chunk, seconds if position else None, position)
        w.task_start = now

    def _unloadable_chunk(
        self, w: WorkerHandle, chunk_id: int, exc: BaseException, now: float
    ) -> None:
        chunk = w.inflight[0]
        if chunk.id != chunk_id:
            raise RuntimeError(f"worker {w.pid} could not load chunk {chunk_id}, not {chunk.id}")
        job = chunk.job
        if not job.cancelled:
            if len(chunk.tasks) == 1:
                job.out.append((chunk.first, False, exc))
            else:
                # Which task does not unpickle? Send them one by one to find out.
                self.stats["tasks"] -= len(chunk.tasks)
                job.put_back(chunk.first, chunk.tasks)
                job.singles += len(chunk.tasks)
        chunk.tasks = []
        self._chunk_done(w, chunk, None, 0)
        w.task_start = now
