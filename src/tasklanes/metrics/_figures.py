"""What the exporters export: one table, so Prometheus and OpenTelemetry agree."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from .._snapshots import LaneSnapshot
from .._stats import bucket_bounds

if TYPE_CHECKING:
    from .._scheduler import Scheduler

__all__ = [
    "COUNTERS",
    "GAUGES",
    "HISTOGRAM_BOUNDS",
    "TIMINGS",
    "cumulative_counts",
    "need",
    "resolve",
]

#: Counters: (name without `_total`, help, how to read it from a lane's snapshot).
COUNTERS: tuple[tuple[str, str, Callable[[LaneSnapshot], float]], ...] = (
    ("tasklanes_tasks_completed", "Tasks that returned a value.", lambda s: s.completed),
    ("tasklanes_tasks_failed", "Tasks that raised.", lambda s: s.failed),
    ("tasklanes_tasks_timed_out", "Tasks that overran their timeout.", lambda s: s.timed_out),
    (
        "tasklanes_tasks_cancelled",
        "Tasks dropped or stopped (cancelled).",
        lambda s: s.cancelled,
    ),
    ("tasklanes_tasks_crashed", "Tasks whose worker process died.", lambda s: s.crashed),
    (
        "tasklanes_tasks_retried",
        "Attempts that failed and ran again (retry=).",
        lambda s: s.retried,
    ),
    ("tasklanes_workers_killed", "Worker processes the lane killed.", lambda s: s.killed),
    (
        "tasklanes_worker_cpu_seconds",
        "CPU time (user + system) of the cpu lane's live worker processes.",
        lambda s: s.workers.cpu_time,
    ),
)

#: Gauges: (name, help, how to read it).
GAUGES: tuple[tuple[str, str, Callable[[LaneSnapshot], float]], ...] = (
    ("tasklanes_tasks_running", "Tasks running now.", lambda s: s.running),
    (
        "tasklanes_tasks_waiting",
        "Tasks taken, waiting for a slot.",
        lambda s: s.waiting,
    ),
    ("tasklanes_tasks_limited", "Tasks admitted but waiting for a limiter.", lambda s: s.limited),
    (
        "tasklanes_lane_capacity",
        "Tasks run at once (io: per loop).",
        lambda s: s.capacity,
    ),
    (
        "tasklanes_error_ratio",
        "(failed + timed_out + crashed) / finished tasks.",
        lambda s: s.error_rate,
    ),
    ("tasklanes_threads_alive", "Worker threads alive (blocking lane).", lambda s: s.threads),
    (
        "tasklanes_worker_memory_bytes",
        "Resident memory of the cpu lane's worker processes.",
        lambda s: s.workers.memory,
    ),
    (
        "tasklanes_loop_lag_p99_seconds",
        "How late the event loop woke the io lane's sampler (99th percentile).",
        lambda s: s.loop_lag.p99,
    ),
    (
        "tasklanes_loop_lag_max_seconds",
        "How late the event loop woke the io lane's sampler (max).",
        lambda s: s.loop_lag.max,
    ),
)

#: Histograms: (name, help, which timing of the snapshot).
TIMINGS: tuple[tuple[str, str, str], ...] = (
    ("tasklanes_task_wait_seconds", "Queue lag: taken by the lane until started.", "wait"),
    ("tasklanes_task_run_seconds", "Run time of a task.", "run"),
)

#: The exported histogram's bucket bounds (seconds). The lanes keep finer buckets
#: (2% wide); each is counted under the first bound not below its upper edge.
HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

_EDGES = bucket_bounds()


def cumulative_counts(hist: list[int], bounds: tuple[float, ...] = HISTOGRAM_BOUNDS) -> list[int]:
    """Counts at or below each bound (cumulative, as Prometheus wants), from a lane's
    fine histogram; the count above the last bound is the total minus the last."""
    out = [0] * len(bounds)
    b = 0
    running = 0
    for k, c in enumerate(hist):
        if k < len(_EDGES):
            while b < len(bounds) and _EDGES[k] > bounds[b] * (1 + 1e-12):
                out[b] = running
                b += 1
        elif b < len(bounds):  # the last, open-ended bucket
            for i in range(b, len(bounds)):
                out[i] = running
            b = len(bounds)
        running += c
    for i in range(b, len(bounds)):
        out[i] = running
    return out


def resolve(scheduler: Scheduler | None) -> Callable[[], Scheduler]:
    """The scheduler to read at each scrape: the given one, or the process-wide one."""
    if scheduler is not None:
        from .._scheduler import Scheduler

        if not isinstance(scheduler, Scheduler):
            raise TypeError(
                f"scheduler must be a tasklanes.Scheduler or None, got {type(scheduler).__name__}"
            )
        fixed = scheduler
        return lambda: fixed
    from .._scheduler import get_scheduler

    return get_scheduler


def need(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail with an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"tasklanes.metrics needs {module.split('.')[0]} for this: "
            f"pip install 'tasklanes[{extra}]'"
        ) from exc
