"""Per-lane counters and timing figures, safe to update from any thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LaneSnapshot", "LaneStats", "Tally", "TimingSummary"]


class _ItemAccess:
    """Lets a snapshot be read as ``s.completed`` or ``s["completed"]``."""

    __slots__ = ()

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(name)
        return getattr(self, name)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}


@dataclass(frozen=True)
class TimingSummary(_ItemAccess):
    """count, mean and max of a duration, in seconds."""

    count: int
    mean: float
    max: float


@dataclass(frozen=True)
class LaneSnapshot(_ItemAccess):
    """The figures of one lane at one moment (see ``Scheduler.stats()``).

    ``capacity`` is how many tasks the lane runs at once (for io: per event loop);
    ``running`` and ``waiting`` are live; the others count tasks since the scheduler
    was created: ``completed`` returned a value, ``failed`` raised, ``timed_out``
    overran their timeout, ``cancelled`` were dropped or stopped because their batch
    was cancelled or failed fast, ``crashed`` lost their worker process. ``killed``
    counts worker processes the lane killed (timeouts and cancellation). ``retried``
    counts attempts that failed and ran again under ``retry=`` (each also counts in
    ``failed``, ``timed_out`` or ``crashed``). ``wait`` is
    the queue lag (from the moment the lane took a task until it started) and ``run``
    its run time.
    """

    kind: str
    capacity: int
    running: int
    waiting: int
    completed: int
    failed: int
    timed_out: int
    cancelled: int
    crashed: int
    killed: int
    retried: int
    wait: TimingSummary
    run: TimingSummary


@dataclass
class Tally:
    """What one batch has done since it last reported; merged into :class:`LaneStats`.

    Batches count into a private tally and merge it under the lane's lock now and
    then, so the hot path of a task never takes a lock.
    """

    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    crashed: int = 0
    retried: int = 0
    run_count: int = 0
    run_total: float = 0.0
    run_max: float = 0.0
    wait_count: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0

    def run(self, seconds: float) -> None:
        self.run_count += 1
        self.run_total += seconds
        if seconds > self.run_max:
            self.run_max = seconds

    def wait(self, seconds: float) -> None:
        self.wait_count += 1
        self.wait_total += seconds
        if seconds > self.wait_max:
            self.wait_max = seconds


@dataclass
class LaneStats:
    """The live figures of one lane. Read them with ``Scheduler.stats()``."""

    kind: str
    capacity: int
    running: int = 0
    waiting: int = 0
    killed: int = 0
    total: Tally = field(default_factory=Tally)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Lanes that can count running/waiting tasks on demand set this instead of
    #: adjusting the gauges on every task.
    live: Callable[[], tuple[int, int]] | None = field(default=None, repr=False)
    #: Counters kept elsewhere (the process pool's kills), read on demand.
    extra: Callable[[], dict[str, int]] | None = field(default=None, repr=False)

    def merge(self, tally: Tally) -> None:
        with self.lock:
            t = self.total
            t.completed += tally.completed
            t.failed += tally.failed
            t.timed_out += tally.timed_out
            t.cancelled += tally.cancelled
            t.crashed += tally.crashed
            t.retried += tally.retried
            t.run_count += tally.run_count
            t.run_total += tally.run_total
            t.run_max = max(t.run_max, tally.run_max)
            t.wait_count += tally.wait_count
            t.wait_total += tally.wait_total
            t.wait_max = max(t.wait_max, tally.wait_max)
        tally.__init__()  # type: ignore[misc]  # reset in place: the batch keeps counting into it

    def adjust(self, running: int = 0, waiting: int = 0, killed: int = 0) -> None:
        with self.lock:
            self.running += running
            self.waiting += waiting
            self.killed += killed

    def snapshot(self) -> LaneSnapshot:
        running, waiting = self.live() if self.live is not None else (0, 0)
        killed = self.extra().get("killed", 0) if self.extra is not None else 0
        with self.lock:
            t = self.total
            return LaneSnapshot(
                kind=self.kind,
                capacity=self.capacity,
                running=self.running + running,
                waiting=self.waiting + waiting,
                completed=t.completed,
                failed=t.failed,
                timed_out=t.timed_out,
                cancelled=t.cancelled,
                crashed=t.crashed,
                killed=self.killed + killed,
                retried=t.retried,
                wait=TimingSummary(
                    t.wait_count, t.wait_total / t.wait_count if t.wait_count else 0.0, t.wait_max
                ),
                run=TimingSummary(
                    t.run_count, t.run_total / t.run_count if t.run_count else 0.0, t.run_max
                ),
            )
