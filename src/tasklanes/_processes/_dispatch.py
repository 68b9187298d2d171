"""Manager layer: which job's tasks go to which worker, in chunks of what size.

A new job's chunks hold one task. Every outcome carries the task's run time as
measured in the worker; a job keeps a moving average of them and sizes its chunks to
last about `TARGET_CHUNK_SECONDS`. A chunk also carries a time budget: a worker that
runs past it hands the unstarted rest back. Jobs share the workers round-robin, each
within its own `limit`. When no job is waiting for a worker, a worker running short
tasks gets up to `PIPELINE_DEPTH` chunks queued, so that it never waits for a round
trip (nor for the manager thread, on a busy machine). Once the job's input has ended
(`PoolJob.put(last=True)`), the rest of its queue is the tail of the batch, split into
smaller chunks so that it spreads over the workers. A worker with a task budget
(`max_tasks_per_worker`) never gets a chunk bigger than what it has left, and retires
once it has been sent its last task.
"""

from __future__ import annotations

import os
import selectors
from typing import Any

from .._call import Call
from ._job import PIPELINE_DEPTH, JobCore, size_for
from ._log import log
from ._pickling import dumps_task
from ._protocol import CHUNK_TIMED
from ._results import ResultReader
from ._wire import chunk_message, encode_chunk, encode_items
from ._workers import READY, RETIRING, Chunk, WorkerHandle

__all__ = ["CHUNK_BUDGET_SECONDS", "PIPELINE_BELOW_SECONDS", "PIPELINE_DEPTH", "Dispatcher"]

CHUNK_BUDGET_SECONDS = 0.02
"""A worker that has spent this long on a chunk gives back the tasks it has not started."""

PIPELINE_BELOW_SECONDS = 0.002
"""Queue more chunks behind a running one only for tasks shorter than this."""


class Dispatcher(ResultReader):
    def _dispatch(self, now: float) -> None:
        jobs = self.jobs
        if not jobs:
            return
        for w in self.workers:
            if w.inflight or w.state is not READY:
                continue
            job = self._next_job()
            if job is None:
                break
            self._send_chunk(w, job, now)
        # Pipelining: with short tasks, a worker that finishes a chunk should find the
        # next one already in its pipe. Only when no job is waiting for a worker, so
        # that fairness between jobs does not suffer.
        for job in jobs:
            if job.queue and job.holders < job.limit and not job.cancelled:
                return
        # Round by round, one chunk per worker each, so that the queue spreads evenly.
        for _ in range(PIPELINE_DEPTH - 1):
            sent = False
            for w in self.workers:
                held = w.job
                if (
                    held is not None
                    and 0 < len(w.inflight) < PIPELINE_DEPTH
                    and w.state is READY
                    and held.queue
                    and held.ewma is not None
                    and held.ewma < PIPELINE_BELOW_SECONDS
                    and not held.cancelled
                    and not held.singles
                ):
                    self._send_chunk(w, held, now)
                    sent = True
            if not sent:
                break

    def _next_job(self) -> JobCore | None:
        jobs = self.jobs
        n = len(jobs)
        for i in range(n):
            j = (self.rr + i) % n
            job = jobs[j]
            if job.queue and job.holders < job.limit and not job.cancelled:
                self.rr = (j + 1) % n
                return job
        return None

    def _chunk_size(self, job: JobCore) -> int:
        if job.singles:
            job.singles -= 1
            return 1
        ewma = job.ewma
        if ewma is None:
            return 1  # nothing measured yet: a long task must not hold others back
        full = size_for(ewma)
        size = min(full, job.max_size * 4)
        if job.input_ended:
            # The tail: leave some for the other workers the job may use, so that it
            # spreads out instead of landing on one worker -- but not in pieces worth
            # less than a sixteenth of a chunk's time: each is a round trip.
            slots = min(job.limit, self.max_workers)
            share = -(-job.queued // (slots * PIPELINE_DEPTH // 2))
            size = max(1, min(size, max(share, full // 16)))
        if size > job.max_size:
            job.max_size = size
        return size

    def _send_chunk(self, w: WorkerHandle, job: JobCore, now: float) -> None:
        q = job.queue
        budget = self.max_tasks_per_worker
        while q:
            size = self._chunk_size(job)
            if budget is not None:
                # Never more than the worker has left: it must not run past its budget.
                size = min(size, budget - w.assigned)
            first, tasks = job.take(size)
            payload = self._pickle_chunk(job, first, tasks)
            if payload is not None:
                break
        else:
            return
        chunk_id = self.next_chunk_id
        self.next_chunk_id = chunk_id + 1
        chunk = Chunk(chunk_id, job, first, tasks)
        if not w.inflight:
            w.task_start = now
            w.job = job
            job.holders += 1
        w.inflight.append(chunk)
        stats = self.stats
        stats["chunks"] += 1
        stats["tasks"] += len(tasks)
        flags = 0 if job.timeout is None else CHUNK_TIMED
        self._write(w, chunk_message(chunk_id, CHUNK_BUDGET_SECONDS, payload, flags))
        if budget is not None:
            w.assigned += len(tasks)
            if w.assigned >= budget:
                w.state = RETIRING
                log.info(
                    "recycling worker process %d after %d tasks",
                    w.pid,
                    w.assigned,
                    extra={"lane": "cpu", "pid": w.pid, "reason": "tasks", "tasks": w.assigned},
                )

    def _pickle_chunk(self, job: JobCore, first: int, tasks: list[Any]) -> bytes | None:
        """Pickle a chunk as one list (much cheaper per task than one by one).

        If that fails, find the culprits by pickling each task alone: each one fails
        with `TypeError`, and the others go back to the front of the queue (in runs of
        consecutive indexes, each sent as a chunk of its own next). None then.
        """
        map_fn = job.map_fn
        try:
            if map_fn is not None:
                return encode_items(map_fn, tasks)
            return encode_chunk(tasks)
        except Exception as exc:
            error: Exception = exc
        bad = []
        for k, task in enumerate(tasks):
            try:
                # An amap item is the task `map_fn(item)`: pickled as that `Call`.
                dumps_task(task if map_fn is None else Call(map_fn, (task,), {}))
            except Exception as exc:
                index = first + k
                failure = TypeError(f"task {index} could not be pickled: {exc!r}")
                failure.__cause__ = exc
                job.out.append((index, False, failure))
                bad.append(k)
        if not bad:
            # Each pickles alone, not together: they fail together.
            for index in range(first, first + len(tasks)):
                job.out.append(
                    (index, False, TypeError(f"task {index} could not be pickled: {error!r}"))
                )
            return None
        start = 0
        for k in [*bad, len(tasks)]:
            job.put_back(first + start, tasks[start:k])
            start = k + 1
        job.requeue_now()
        return None

    # ------------------------------------------------------------------ writing

    def _write(self, w: WorkerHandle, data: bytes) -> None:
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
            self.selector.register(w.wfd, selectors.EVENT_WRITE, (self._flush, w))
            w.writing = True

    def _flush(self, w: WorkerHandle, now: float) -> None:
        if not w.writing:
            return  # stopped earlier in the same turn (the worker died)
        try:
            written = os.write(w.wfd, w.outbuf)
        except BlockingIOError:
            return
        except OSError:
            written = len(w.outbuf)
        del w.outbuf[:written]
        if not w.outbuf:
            self._stop_writing(w)

    def _stop_writing(self, w: WorkerHandle) -> None:
        if w.writing:
            w.writing = False
            self.selector.unregister(w.wfd)
