"""Per-lane counters and timing figures, safe to update from any thread."""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._auto import AutoDecision

__all__ = [
    "BUCKETS",
    "LaneSnapshot",
    "LaneStats",
    "Tally",
    "TimingSummary",
    "WorkerResources",
    "add_counts",
    "bucket_bounds",
    "percentiles",
    "record",
    "shifted",
]

# -- log-bucket histogram ----------------------------------------------------------------
#
# Durations go into buckets whose bounds grow by a factor GAMMA (DDSketch's mapping):
# bucket i >= 1 holds (FLOOR * GAMMA**(i-1), FLOOR * GAMMA**i], and reporting a bucket
# by 2 * FLOOR * GAMMA**i / (GAMMA + 1) is within ALPHA (relative) of any value in it.
# A batch records into a small dict (only the buckets it touched, no lock); the lane
# merges it into a fixed list of BUCKETS counters under its lock.
ALPHA = 0.02
GAMMA = (1 + ALPHA) / (1 - ALPHA)
FLOOR = 1e-9  # 1 ns: shorter durations share bucket 0, reported as 0
CEILING = 1e6  # about 11 days: longer ones share the last bucket (reported as max)
INV_LOG_GAMMA = _INV_LOG_GAMMA = 1 / math.log(GAMMA)
_INV_FLOOR = 1 / FLOOR
BUCKETS = math.ceil(math.log(CEILING / FLOOR) * _INV_LOG_GAMMA) + 2
_TOP = BUCKETS - 1
_log = math.log


def record(hist: dict[int, int], seconds: float, count: int = 1) -> None:
    """Count `seconds` (`count` times) into a batch's sparse histogram."""
    k = int(_log(seconds * _INV_FLOOR) * _INV_LOG_GAMMA) + 1 if seconds > FLOOR else 0
    hist[k] = hist.get(k, 0) + count


def _key(seconds: float) -> int:
    """The bucket of a duration above `FLOOR` (as `record` computes it)."""
    return int(_log(seconds * _INV_FLOOR) * _INV_LOG_GAMMA) + 1


def record_all(hist: dict[int, int], times: list[float]) -> None:
    """Count many durations into a sparse histogram, and empty `times`.

    The io lane's hot loop only appends run times and calls this now and then. Run
    times cluster (a batch's tasks are alike), so the durations are sorted (in C) and
    taken one bucket at a time: a logarithm and a bisection per bucket met, not a
    logarithm per duration. A bucket taken so costs about as much as eight durations
    bucketed in bulk by a chain of C-level `map`s counted by `Counter`: past one bucket
    per eight durations (durations spread thin), the rest go that way. Either way the
    buckets are exactly those of `record`.
    """
    if not times:
        return
    times.sort()
    n = len(times)
    i = 0
    if times[0] <= FLOOR:
        i = bisect_right(times, FLOOR)
        hist[0] = hist.get(0, 0) + i
    for _ in range(8 + n // 8):
        if i >= n:
            times.clear()
            return
        k = _key(times[i])
        # Bucket k holds (FLOOR * GAMMA**(k-1), FLOOR * GAMMA**k]; the two loops settle
        # a duration within rounding of that bound as `_key` does.
        j = bisect_right(times, FLOOR * GAMMA**k, i + 1)
        while j > i + 1 and _key(times[j - 1]) != k:
            j -= 1
        while j < n and _key(times[j]) == k:
            j += 1
        hist[k] = hist.get(k, 0) + (j - i)
        i = j
    if i < n:  # spread over many buckets: the rest in bulk
        rest = times[i:] if i else times
        keys = map(int, map(_INV_LOG_GAMMA.__mul__, map(_log, map(_INV_FLOOR.__mul__, rest))))
        for k, c in Counter(keys).items():
            hist[k + 1] = hist.get(k + 1, 0) + c
    times.clear()


def bucket_bounds() -> list[float]:
    """Upper bound (seconds) of every bucket but the last, for exporters."""
    return [FLOOR * GAMMA**i for i in range(BUCKETS - 1)]


def _value(k: int) -> float:
    return 0.0 if k == 0 else 2 * FLOOR * GAMMA**k / (GAMMA + 1)


def percentiles(
    hist: list[int], count: int, top: float, qs: tuple[float, ...] = (0.5, 0.9, 0.99)
) -> tuple[float, ...]:
    """The `qs` quantiles of a merged histogram, each at most `top` (the exact max).

    The q-quantile is the value of rank `floor(q * (count - 1))` (0-based) of the
    sorted durations; the estimate is within `ALPHA` of it (relative), or 1 ns.
    """
    if count == 0:
        return tuple(0.0 for _ in qs)
    ranks = [math.floor(q * (count - 1)) for q in qs]
    out: list[float] = []
    seen = 0
    i = 0
    for k, c in enumerate(hist):
        if not c:
            continue
        seen += c
        while i < len(ranks) and ranks[i] < seen:
            out.append(min(_value(k), top))
            i += 1
        if i == len(ranks):
            break
    while len(out) < len(qs):  # a count ahead of the histogram (never, but be safe)
        out.append(top)
    return tuple(out)


def add_counts(into: dict[int, int], part: dict[int, int]) -> None:
    """Add a sparse histogram into another, and empty it."""
    for k, c in part.items():
        into[k] = into.get(k, 0) + c
    part.clear()


def shifted(hist: dict[int, int], by: float) -> dict[int, int]:
    """A sparse histogram with every bucket's value moved by `by` seconds (floored at 0)."""
    out: dict[int, int] = {}
    for k, c in hist.items():
        record(out, max(_value(k) + by, 0.0), c)
    return out


def _merge_hist(into: list[int], part: dict[int, int]) -> None:
    for k, c in part.items():
        into[k if k < _TOP else _TOP] += c


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


@dataclass
class Tally:
    """What one batch has done since it last reported; merged into `LaneStats`.

    Batches count into a private tally and merge it under the lane's lock now and
    then, so the hot path of a task never takes a lock. The histograms are sparse
    (bucket -> count) and hold at most `BUCKETS` keys.
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
    run_hist: dict[int, int] = field(default_factory=dict)
    wait_hist: dict[int, int] = field(default_factory=dict)

    def run(self, seconds: float) -> None:
        self.run_count += 1
        self.run_total += seconds
        if seconds > self.run_max:
            self.run_max = seconds
        h = self.run_hist
        k = int(_log(seconds * _INV_FLOOR) * _INV_LOG_GAMMA) + 1 if seconds > FLOOR else 0
        h[k] = h.get(k, 0) + 1

    def wait(self, seconds: float) -> None:
        self.wait_count += 1
        self.wait_total += seconds
        if seconds > self.wait_max:
            self.wait_max = seconds
        h = self.wait_hist
        k = int(_log(seconds * _INV_FLOOR) * _INV_LOG_GAMMA) + 1 if seconds > FLOOR else 0
        h[k] = h.get(k, 0) + 1


class _Figure:
    """One duration's merged figures: count, total, max and a fixed histogram."""

    __slots__ = ("count", "hist", "max", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.hist = [0] * BUCKETS

    def add(self, count: int, total: float, top: float, hist: dict[int, int]) -> None:
        self.count += count
        self.total += total
        if top > self.max:
            self.max = top
        _merge_hist(self.hist, hist)

    def summary(self) -> TimingSummary:
        n = self.count
        p50, p90, p99 = percentiles(self.hist, n, self.max)
        return TimingSummary(n, self.total / n if n else 0.0, self.max, p50, p90, p99)


@dataclass
class LaneStats:
    """The live figures of one lane. Read them with `Scheduler.stats()`."""

    kind: str
    capacity: int
    running: int = 0
    waiting: int = 0
    #: Tasks admitted but waiting for a limiter: the lane runner bumps it with
    #: `adjust(limited=...)`.
    limited: int = 0
    total: Tally = field(default_factory=Tally)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Lanes that can count running/waiting tasks on demand set this instead of
    #: adjusting the gauges on every task.
    live: Callable[[], tuple[int, int]] | None = field(default=None, repr=False)
    #: Counters kept elsewhere (the process pool's kills), read on demand.
    extra: Callable[[], dict[str, int]] | None = field(default=None, repr=False)
    #: Worker threads alive (blocking lane), read on demand.
    threads: Callable[[], int] | None = field(default=None, repr=False)
    #: The cpu workers' memory and CPU time, read on demand.
    resources: Callable[[], WorkerResources] | None = field(default=None, repr=False)
    _run: _Figure = field(default_factory=_Figure, repr=False)
    _wait: _Figure = field(default_factory=_Figure, repr=False)
    _lag: _Figure = field(default_factory=_Figure, repr=False)

    def merge(self, tally: Tally) -> None:
        with self.lock:
            t = self.total
            t.completed += tally.completed
            t.failed += tally.failed
            t.timed_out += tally.timed_out
            t.cancelled += tally.cancelled
            t.crashed += tally.crashed
            t.retried += tally.retried
            self._run.add(tally.run_count, tally.run_total, tally.run_max, tally.run_hist)
            self._wait.add(tally.wait_count, tally.wait_total, tally.wait_max, tally.wait_hist)
        tally.__init__()  # type: ignore[misc]  # reset in place: the batch keeps counting into it

    def merge_lag(self, count: int, total: float, top: float, hist: dict[int, int]) -> None:
        """Add event-loop lag samples (see `_loop_lag`)."""
        with self.lock:
            self._lag.add(count, total, top, hist)

    def adjust(self, running: int = 0, waiting: int = 0, limited: int = 0) -> None:
        with self.lock:
            self.running += running
            self.waiting += waiting
            self.limited += limited

    def snapshot(self) -> LaneSnapshot:
        running, waiting = self.live() if self.live is not None else (0, 0)
        extra = self.extra() if self.extra is not None else {}
        killed = extra.get("killed", 0)
        threads = self.threads() if self.threads is not None else 0
        workers = self.resources() if self.resources is not None else WorkerResources()
        with self.lock:
            t = self.total
            errors = t.failed + t.timed_out + t.crashed
            finished = errors + t.completed
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
                killed=killed,
                retried=t.retried,
                wait=self._wait.summary(),
                run=self._run.summary(),
                recycled=extra.get("recycled", 0),
                error_rate=errors / finished if finished else 0.0,
                threads=threads,
                limited=self.limited,
                loop_lag=self._lag.summary(),
                workers=workers,
            )

    def histograms(self) -> dict[str, tuple[list[int], int, float]]:
        """Copies of the `wait` and `run` histograms with their count and total (exporters)."""
        with self.lock:
            return {
                name: (list(f.hist), f.count, f.total)
                for name, f in (("wait", self._wait), ("run", self._run))
            }
