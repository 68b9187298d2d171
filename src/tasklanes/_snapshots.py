"""The figures `Scheduler.stats()` returns: frozen dataclasses, read-only.

Apart from `_stats` (which keeps the live counters) so that a program that never asks
for figures never imports `dataclasses` (with `inspect`, ~5 ms of a one-shot script).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._auto import AutoDecision

__all__ = ["LaneSnapshot", "TimingSummary", "WorkerResources"]


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
    """count, mean, max and percentiles of a duration, in seconds.

    `p50`, `p90` and `p99` come from a log-bucket histogram: within 2% (relative)
    of the exact percentile, and never above `max`.
    """

    count: int
    mean: float
    max: float
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True)
class WorkerResources(_ItemAccess):
    """Resident memory (bytes) and CPU time (user + system seconds) of the cpu workers.

    `workers` is how many processes were read; the others are sums over them.
    """

    workers: int = 0
    memory: int = 0
    cpu_time: float = 0.0


@dataclass(frozen=True)
class LaneSnapshot(_ItemAccess):
    """The figures of one lane at one moment (see `Scheduler.stats()`).

    `capacity` is how many tasks the lane runs at once (for io: per event loop);
    `running` and `waiting` are live; the others count tasks since the scheduler
    was created: `completed` returned a value, `failed` raised, `timed_out`
    overran their timeout, `cancelled` were dropped or stopped because their batch
    was cancelled or failed fast, `crashed` lost their worker process. `killed`
    counts worker processes the lane killed (timeouts and cancellation). `retried`
    counts attempts that failed and ran again under `retry=` (each also counts in
    `failed`, `timed_out` or `crashed`). `wait` is
    the queue lag (from the moment the lane took a task until it started) and `run`
    its run time.

    Overload figures: `error_rate` is `(failed + timed_out + crashed) / finished`
    (finished: those four counts plus `completed`; 0.0 before any), `threads` the
    worker threads alive (blocking lane), `limited` the tasks admitted but waiting
    for a limiter, `loop_lag` how late the io lane's sampler woke on the event loop
    (seconds; io lane), and `workers` the cpu workers' resident memory and CPU time.
    A figure that does not apply to a lane is zero. `auto` lists the functions that
    `kind="auto"` sent to this lane, with its measure and reason.
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
    #: Worker processes replaced by recycling (``Scheduler(cpu_max_tasks_per_worker=,
    #: cpu_max_worker_memory=)``); 0 on other lanes.
    recycled: int = 0
    error_rate: float = 0.0
    threads: int = 0
    limited: int = 0
    loop_lag: TimingSummary = TimingSummary(0, 0.0, 0.0)
    workers: WorkerResources = WorkerResources()
    #: The functions ``kind="auto"`` sends to this lane, one
    #: [AutoDecision][tasklanes.AutoDecision] each, by name.
    auto: tuple[AutoDecision, ...] = ()
