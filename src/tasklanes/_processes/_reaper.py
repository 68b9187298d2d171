"""Manager layer: deadlines, kills, deaths, recycling and respawns.

The start time of a task, for its timeout, is when the parent learnt that the previous
task of the same worker finished (the arrival of its outcome), or when the chunk was
sent to an idle worker, or the start the worker itself published in its shared slot,
whichever is latest. That errs on the side of lateness, never early.

When a worker dies, the task it was running takes the blame (`WorkerCrashed`) and every
task after it runs again elsewhere; outcomes it held are read from its journal first.
"""

from __future__ import annotations

import contextlib

from .._errors import TaskTimeout, WorkerCrashed
from ._context import worker_exit_error
from ._dispatch import Dispatcher
from ._job import JobCore
from ._log import log
from ._workers import DEAD, DOOMED, RETIRING, STARTING, Chunk, WorkerHandle

__all__ = ["KILL_GRACE_SECONDS", "Reaper"]

KILL_GRACE_SECONDS = 0.2
"""Between SIGTERM and SIGKILL when the pool kills a worker."""

RETIRE_GRACE_SECONDS = 5.0
"""A retired worker exits by itself when its task pipe closes; SIGKILL if it has not
after this long."""

SPAWN_RETRY_SECONDS = 0.5
# After this many worker starts in a row fail (no worker ready in between), the pool
# stops trying and fails the tasks that wait, rather than leave their callers hanging.
# (`_context.worker_exit_error` says when the cause is a script without
# ``if __name__ == "__main__":``.)
SPAWN_GIVE_UP = 3


class Reaper(Dispatcher):
    def _next_timeout(self, now: float) -> float | None:
        deadline = float("inf")
        for w in self.workers:
            if w.state is DOOMED:
                if w.kill_at is not None and w.kill_at < deadline:
                    deadline = w.kill_at
            elif w.job is not None:
                timeout = w.job.timeout
                if timeout is not None and w.task_start + timeout < deadline:
                    deadline = w.task_start + timeout
        if self.spawn_retry_at is not None and self.spawn_retry_at < deadline:
            deadline = self.spawn_retry_at
        if deadline == float("inf"):
            return None
        return max(0.0, deadline - now)

    def _check_deadlines(self, now: float) -> None:
        for w in self.workers:
            state = w.state
            if state is DEAD:
                continue
            if state is DOOMED:
                if w.kill_at is not None and now >= w.kill_at:
                    w.kill_at = None
                    with contextlib.suppress(OSError, ValueError):  # already gone
                        w.proc.kill()
                continue
            job = w.job
            if job is None or job.timeout is None:
                continue
            offset = w.running_offset()
            if offset < 0:
                # Nothing runs right now, so whatever starts next starts later than
                # this: its timeout counts from no earlier than now.
                w.task_start = now
                continue
            started_at = w.slot[1]
            if started_at > w.task_start:
                w.task_start = started_at  # the worker's own word beats our guess
            if now - w.task_start >= job.timeout:
                found = w.locate(offset)
                if found is None:
                    log.error(
                        "a worker's slot names a task the pool did not send it; not timed out",
                        extra={"lane": "cpu", "pid": w.pid, "offset": offset},
                    )
                    continue
                chunk, k = found
                index = chunk.first + k
                job.out.append((index, False, TaskTimeout(index, job.timeout)))
                w.timed_out = (chunk, k)
                self.stats["timed_out"] += 1
                log.info(
                    "killing worker process %d: task %d ran past its timeout of %s s",
                    w.pid,
                    index,
                    job.timeout,
                    extra={"lane": "cpu", "pid": w.pid, "index": index, "timeout": job.timeout},
                )
                self._kill(w, now)

    def _kill(self, w: WorkerHandle, now: float) -> None:
        w.state = DOOMED
        w.kill_at = now + KILL_GRACE_SECONDS
        self.stats["killed"] += 1
        with contextlib.suppress(OSError, ValueError):  # already gone
            w.proc.terminate()
        self._update_counts()

    def _cancel_job(self, job: JobCore, now: float) -> None:
        job.cancelled = True
        job.drop_queue()
        job.out.clear()
        for w in self.workers:
            if w.job is job and w.state is not DOOMED and w.state is not DEAD:
                log.info(
                    "killing worker process %d: its job was cancelled",
                    w.pid,
                    extra={"lane": "cpu", "pid": w.pid, "reason": "cancel"},
                )
                self._kill(w, now)

    def _retire(self, w: WorkerHandle, now: float) -> None:
        """An idle `RETIRING` worker: close its task pipe (it exits at end of file) and
        let a fresh one take its place."""
        self._stop_writing(w)
        w.wconn.close()
        w.state = DOOMED
        w.kill_at = now + RETIRE_GRACE_SECONDS
        self.stats["recycled"] += 1

    def _on_exit(self, w: WorkerHandle, now: float) -> None:
        """A worker's sentinel fired: it is dead. Settle the tasks it held."""
        if w.state is DEAD:
            return
        if w.stream is not None:
            # A big frame is still being read from its pipe: what the worker wrote
            # before it died decides which of its tasks has an outcome. The reader
            # sees the death too and ends at once; `Manager._stream_done` brings us
            # back here then.
            w.stream.exited = True
            self.selector.unregister(w.sentinel)
            return
        crashed = w.state is not DOOMED
        was_ready = w.state is not STARTING
        w.state = DEAD
        self.selector.unregister(w.sentinel)
        self._drain(w, now)
        self._recover_held(w, now)
        self._stop_writing(w)
        w.proc.join(0.5)  # reaps it; immediate, since the sentinel fired
        exitcode = w.proc.exitcode
        if crashed and (w.inflight or not was_ready):
            self.stats["crashed"] += 1
        if crashed and not was_ready and not self.stopping:
            self.spawn_failures += 1
            self.spawn_error = worker_exit_error(exitcode)
        # The task that was running takes the blame for a crash; every task after it
        # runs again elsewhere. Outcomes it held were read from its journal above, and
        # it runs its tasks in order, so the running task is the first without an
        # outcome -- all a job without a timeout goes by (its worker publishes no
        # start per task); with a timeout, its slot says the same. (If none was
        # running, the worker died between tasks, or loading a chunk: the first task
        # without an outcome takes the blame, so that a chunk that kills every worker
        # cannot loop forever.)
        timed = w.job is not None and w.job.timeout is not None
        blame = max(w.running_offset(), 0) if timed else 0
        blamed: int | None = None
        position = 0
        for chunk in w.inflight:
            job = chunk.job
            # The chunk's tasks without an outcome run again, but for the one that
            # takes the blame and one already failed for its timeout: put back in
            # runs of consecutive tasks around those.
            start = chunk.done
            for k in range(chunk.done, len(chunk.tasks)):
                index = chunk.first + k
                here = position
                position += 1
                if w.timed_out is not None and w.timed_out == (chunk, k):
                    if job.on_gone is not None:
                        job.on_gone(index)
                elif job.cancelled or not (here == blame and crashed):
                    continue
                else:
                    job.out.append((index, False, WorkerCrashed(index, exitcode)))
                    blamed = index
                if not job.cancelled:
                    self._put_back(job, chunk, start, k)
                start = k + 1
            if not job.cancelled:
                self._put_back(job, chunk, start, len(chunk.tasks))
        if crashed:
            log.warning(
                "worker process %d crashed (exit code %s)%s",
                w.pid,
                exitcode,
                f" while running task {blamed}" if blamed is not None else "",
                extra={"lane": "cpu", "index": blamed, "pid": w.pid, "exitcode": exitcode},
            )
        w.inflight.clear()
        if w.job is not None:
            w.job.holders -= 1
            w.job = None
        self.workers.remove(w)
        self._close_worker(w)
        self._update_counts()

    def _put_back(self, job: JobCore, chunk: Chunk, start: int, end: int) -> None:
        """Tasks `start` to `end` (positions) of a dead worker's chunk run again."""
        if end > start:
            job.put_back(chunk.first + start, chunk.tasks[start:end])
            self.stats["tasks"] -= end - start  # sent again: counted once

    def _close_worker(self, w: WorkerHandle) -> None:
        for conn in (w.wconn, w.rconn):
            conn.close()
        w.slot.release()
        w.journal.release()
        w.block.close()
        try:
            w.proc.close()
        except ValueError:
            # Still running: only at shutdown, if even SIGKILL did not end it.
            log.error(
                "worker process %d did not exit; abandoned",
                w.pid,
                extra={"lane": "cpu", "pid": w.pid},
            )

    def _spawn_failed(self, error: BaseException, now: float) -> None:
        self.stats["spawn_errors"] += 1
        self.spawn_failures += 1
        self.spawn_error = error
        self.spawn_retry_at = now + SPAWN_RETRY_SECONDS
        log.warning(
            "could not start a worker process: %r",
            error,
            extra={"lane": "cpu", "attempt": self.spawn_failures},
        )

    def _requeue_and_spawn(self, now: float) -> None:
        for job in self.jobs:
            job.requeue_now()
        for w in self.workers:
            if w.state is RETIRING and not w.inflight:
                self._retire(w, now)
        if self.spawn_failures >= SPAWN_GIVE_UP:
            self._give_up_waiting_tasks()
            return
        if self.spawn_retry_at is not None:
            if now < self.spawn_retry_at:
                return
            self.spawn_retry_at = None
        alive = sum(1 for w in self.workers if w.alive)
        missing = self.max_workers - alive - self.spawning
        if missing > 0 and self.spawner is not None:
            self.spawner.request(missing)
            self.spawning += missing
            self._update_counts()

    def _give_up_waiting_tasks(self) -> None:
        """Workers cannot be started: fail every task that waits for one (while a live
        worker remains, it serves them instead). No new start is tried until a new job
        opens."""
        if any(w.alive for w in self.workers):
            return
        cause = self.spawn_error
        for job in self.jobs:
            if job.cancelled or not job.queue:
                continue
            for first, tasks in job.drop_queue():
                for index in range(first, first + len(tasks)):
                    error = RuntimeError(
                        f"task {index} did not run: tasklanes could not start a worker "
                        f"process ({self.spawn_failures} attempts in a row failed; last: "
                        f"{cause})"
                    )
                    error.__cause__ = cause
                    job.out.append((index, False, error))
