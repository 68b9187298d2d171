"""Commands to the manager thread: small objects queued by other threads.

A caller (or the spawner thread) never touches the manager's state: it queues one of
these through `Manager.submit` and the manager runs it on its own thread, on its next
turn (or during its shutdown, so that none is lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ._job import JobCore
from ._stream import BigFrameReader
from ._workers import WorkerHandle

if TYPE_CHECKING:
    from ._manager import Manager

__all__ = [
    "CancelJob",
    "CloseInput",
    "Command",
    "OpenJob",
    "SpawnFailed",
    "StreamDone",
    "WorkerStarted",
]


class Command(Protocol):
    def run(self, m: Manager, now: float) -> None: ...


class OpenJob:
    __slots__ = ("job",)

    def __init__(self, job: JobCore) -> None:
        self.job = job

    def run(self, m: Manager, now: float) -> None:
        # A new job gets fresh attempts, even after the pool gave up once.
        m.spawn_failures = 0
        m.jobs.append(self.job)
        m._update_counts()


class CloseInput:
    __slots__ = ("job",)

    def __init__(self, job: JobCore) -> None:
        self.job = job

    def run(self, m: Manager, now: float) -> None:
        self.job.input_closed = True
        self.job.input_ended = True  # for a caller that never said `put(last=True)`


class CancelJob:
    __slots__ = ("job",)

    def __init__(self, job: JobCore) -> None:
        self.job = job

    def run(self, m: Manager, now: float) -> None:
        m._cancel_job(self.job, now)


class WorkerStarted:
    __slots__ = ("worker",)

    def __init__(self, worker: WorkerHandle) -> None:
        self.worker = worker

    def run(self, m: Manager, now: float) -> None:
        m.spawning -= 1
        m._add_worker(self.worker)


class SpawnFailed:
    """A requested start did not happen: `error` is why (None: the pool is stopping)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def run(self, m: Manager, now: float) -> None:
        m.spawning -= 1
        if self.error is not None:
            m._spawn_failed(self.error, now)
        m._update_counts()


class StreamDone:
    """A big frame's reader ended (see `_stream`): settle its outcome."""

    __slots__ = ("reader",)

    def __init__(self, reader: BigFrameReader) -> None:
        self.reader = reader

    def run(self, m: Manager, now: float) -> None:
        m._stream_done(self.reader, now)
