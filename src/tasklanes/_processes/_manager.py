"""The manager thread: one object that owns the workers and runs the pool's loop
(as CPython's `_ExecutorManagerThread`).

Its behaviour is written in layers (see `_state`); this last one holds the loop, the
door through which other threads hand it work (`Manager.submit` and `PoolJob.put`)
and the shutdown. One turn of the loop: wait on the selector (the wake-up pipe, each
worker's result pipe, its sentinel, and its task pipe while a write is pending) until
the next deadline; handle the events; run the queued commands; enforce deadlines;
requeue, retire and respawn; dispatch; deliver.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from multiprocessing.context import BaseContext
from time import monotonic

from ._commands import Command
from ._delivery import Delivery
from ._log import log
from ._protocol import TAG_OTHER
from ._reaper import KILL_GRACE_SECONDS
from ._spawner import Spawner
from ._stream import BigFrameReader, StreamEnd
from ._workers import DEAD, DOOMED, WorkerHandle
from ._zygote import Zygote

__all__ = ["Manager"]


class Manager(Delivery):
    def __init__(
        self,
        max_workers: int,
        ctx: BaseContext,
        stats: dict[str, int],
        max_tasks_per_worker: int | None,
        max_worker_memory: int | None,
        zygote: Zygote | None = None,
        *,
        worker_nice: int = 0,
    ) -> None:
        super().__init__(
            max_workers, ctx, stats, max_tasks_per_worker, max_worker_memory, zygote
        )
        self.worker_nice = worker_nice  # for the spawner: see `_workers.lower_priority`
        self.selector.register(self.wakeup.r, selectors.EVENT_READ, (self._on_wake, None))
        self.spawner = Spawner(self)
        # Daemon, so that it never holds up interpreter exit; the pool's atexit hook
        # closes it (atexit hooks run before daemon threads are frozen).
        self.thread = threading.Thread(target=self._main, name="tasklanes-pool", daemon=True)

    def start(self) -> None:
        assert self.spawner is not None
        self.spawner.start()
        self.thread.start()

    # ------------------------------------------------------------------ any thread

    def submit(self, command: Command) -> bool:
        """Queue `command` for the manager thread; False if it no longer takes any
        (it has shut down, or is in its last look at the queues)."""
        with self.door:
            if not self.accepting:
                return False
            self.commands.append(command)
            self.wakeup.wake()
            return True

    def request_stop(self) -> None:
        with self.door:
            self.stopping = True
            if self.accepting:
                self.wakeup.wake()

    # ------------------------------------------------------------------ manager thread

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException:
            # A bug here would leave jobs hanging: say so, then shut down, which
            # fails every unfinished task so that no caller waits forever.
            log.critical("the process pool's manager thread crashed", exc_info=True)
        finally:
            try:
                self._shutdown()
            except BaseException:
                log.critical("the process pool's shutdown failed", exc_info=True)

    def _loop(self) -> None:
        sel = self.selector
        commands = self.commands
        while not self.stopping:
            events = sel.select(self._next_timeout(monotonic()))
            now = monotonic()
            for key, _ in events:
                handler, worker = key.data
                handler(worker, now)
            while commands:
                commands.popleft().run(self, now)
            self._check_deadlines(now)
            self._requeue_and_spawn(now)
            self._dispatch(now)
            self._deliver_and_settle()

    def _on_wake(self, _: object, now: float) -> None:
        self.wakeup.drain()

    def _add_worker(self, w: WorkerHandle) -> None:
        self.workers.append(w)
        self.stats["started"] += 1
        self.selector.register(w.rfd, selectors.EVENT_READ, (self._read, w))
        self.selector.register(w.sentinel, selectors.EVENT_READ, (self._on_exit, w))
        w.reading = True
        self._update_counts()

    def _stream_done(self, reader: BigFrameReader, now: float) -> None:
        """A big frame's reader ended (see `_stream`): settle what it read, take the
        worker's pipe back, and handle the worker's exit if it died meanwhile."""
        w = reader.worker
        if w.stream is not reader:
            return  # settled already (by the shutdown)
        reader.thread.join()  # it has nothing left to do but return
        w.stream = None
        end = reader.end
        if end is StreamEnd.WHOLE:
            error = None if reader.ok else f"could not be unpickled: {reader.value!r}"
            if reader.tag != TAG_OTHER:
                value = reader.value if reader.ok else None
                self._outcome(w, reader.ok, value, reader.seconds, now, error)
            elif reader.ok:
                self._other(w, reader.value, now)  # type: ignore[arg-type]
            else:
                self._outcome(w, False, None, None, now, error)
            # In step again: read on (also after a death: frames may follow this one).
            self.selector.register(w.rfd, selectors.EVENT_READ, (self._read, w))
            w.reading = True
        elif end is StreamEnd.FAILED:
            log.error(
                "could not read a big result from worker process %d; killing it",
                w.pid,
                exc_info=reader.value,  # type: ignore[arg-type]
                extra={"lane": "cpu", "pid": w.pid},
            )
            if w.inflight:
                self._outcome(w, False, None, None, now, f"could not be read: {reader.value!r}")
            if w.state is not DOOMED and not reader.exited:
                self._kill(w, now)  # its pipe is out of step: it cannot go on
        # CUT: the worker is gone (or going) mid-frame: its exit settles its tasks.
        reader.value = None
        if reader.exited:
            # Its exit was put off until now (`_on_exit`): the sentinel fires again.
            self.selector.register(w.sentinel, selectors.EVENT_READ, (self._on_exit, w))

    def _finish_streams(self, now: float) -> None:
        """At shutdown, once the workers are dead: wait for the readers of big frames
        (they end as soon as they see the death) and settle them."""
        for w in self.workers:
            reader = w.stream
            if reader is None:
                continue
            reader.thread.join(KILL_GRACE_SECONDS + 5.0)
            if reader.thread.is_alive():
                reader.abandon()
                reader.thread.join(5.0)
            if reader.thread.is_alive():
                log.error(
                    "the reader of a big result from worker process %d did not end; abandoned",
                    w.pid,
                    extra={"lane": "cpu", "pid": w.pid},
                )
                continue
            self._stream_done(reader, now)

    def _shutdown(self) -> None:
        """On the manager thread, as it exits: no worker survives this, and every job
        settles."""
        self.stopping = True
        if self.spawner is not None:
            self.spawner.stop()
        if self.zygote is not None:
            self.zygote.stop()  # it exits as soon as its workers, stopped below, are gone
        # The last look at the queues: from here on, submit() and put() see the door
        # closed and fail fast instead of queuing work nobody would do.
        with self.door:
            self.accepting = False
            commands = list(self.commands)
            self.commands.clear()
        now = monotonic()
        for command in commands:
            command.run(self, now)
        # Closing the alive pipe makes idle workers exit on their own; SIGTERM the rest.
        if self.alive_w >= 0:
            os.close(self.alive_w)
            self.alive_w = -1
        for w in self.workers:
            if w.state is not DEAD:
                with contextlib.suppress(OSError, ValueError):  # already gone
                    w.proc.terminate()
        deadline = monotonic() + KILL_GRACE_SECONDS
        for w in self.workers:
            if w.state is not DEAD:
                w.proc.join(max(0.0, deadline - monotonic()))
        for w in self.workers:
            if w.state is not DEAD and w.proc.exitcode is None:
                with contextlib.suppress(OSError, ValueError):  # already gone
                    w.proc.kill()
                w.proc.join(5.0)
        # Outcomes that reached the pipes or the journals before the end still count.
        now = monotonic()
        self._finish_streams(now)
        for w in self.workers:
            if w.inflight:
                try:
                    self._drain(w, now)
                    self._recover_held(w, now)
                except Exception:
                    log.error(
                        "could not read the last outcomes of worker process %d",
                        w.pid,
                        exc_info=True,
                        extra={"lane": "cpu", "pid": w.pid},
                    )
        self._fail_unfinished_jobs()
        for w in self.workers:
            w.state = DEAD
            self._close_worker(w)
        self.workers.clear()
        self._update_counts()
        self.selector.close()
        self.wakeup.close()  # nobody writes to it any more: accepting is off
        if self.alive_r is not None:
            self.alive_r.close()
            self.alive_r = None
        if self.zygote is not None:
            self.zygote.close()  # its workers are gone: it exits at once
