"""The spawner thread: starts worker processes for the manager.

`Process.start()` blocks (the first forkserver start takes tens of ms), so it runs
here, never on the manager thread nor on a caller's. The manager asks for starts with
[request][tasklanes._processes._spawner.Spawner.request]; each one is answered with a
`WorkerStarted` or a `SpawnFailed` command.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING

from ._commands import SpawnFailed, WorkerStarted
from ._log import log
from ._workers import WorkerHandle, lower_priority, spawn_worker

if TYPE_CHECKING:
    from ._manager import Manager

__all__ = ["Spawner"]


class Spawner:
    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, name="tasklanes-pool-spawner", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request(self, n: int) -> None:
        """Start `n` more workers."""
        for _ in range(n):
            self._requests.put(True)

    def stop(self) -> None:
        """Answer the pending requests with `SpawnFailed(None)` and end the thread."""
        self._requests.put(False)
        self._thread.join()

    def _main(self) -> None:
        m = self._manager
        while self._requests.get():
            if m.stopping:
                m.submit(SpawnFailed(None))
                continue
            try:
                worker = spawn_worker(m.ctx, m.alive_reader(), m.parent_fds(), m.zygote)
                if m.worker_nice:
                    lower_priority(worker.pid, m.worker_nice)
            except Exception as exc:
                m.submit(SpawnFailed(exc))
                continue
            if not m.submit(WorkerStarted(worker)):  # pragma: no cover - stop() joins us first
                log.error("a worker started after the pool stopped", extra={"pid": worker.pid})
                _discard(worker)


def _discard(w: WorkerHandle) -> None:
    with contextlib.suppress(OSError, ValueError):
        w.proc.kill()
    w.proc.join(5.0)
    for conn in (w.wconn, w.rconn):
        conn.close()
    w.slot.release()
    w.journal.release()
    w.block.close()
