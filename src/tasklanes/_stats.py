"""Per-lane counters and timing figures, safe to update from any thread."""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# The snapshot types are dataclasses, in `_snapshots`, imported when figures are read:
# counting costs no `dataclasses` import.
if TYPE_CHECKING:
    from ._snapshots import LaneSnapshot, TimingSummary, WorkerResources

__all__ = [
    "BUCKETS",
    "LaneStats",
    "Tally",
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


class Tally:
    """What one batch has done since it last reported; merged into `LaneStats`.

    Batches count into a private tally and merge it under the lane's lock now and
    then, so the hot path of a task never takes a lock. The histograms are sparse
    (bucket -> count) and hold at most `BUCKETS` keys.
    """

    def __init__(
        self,
        completed: int = 0,
        failed: int = 0,
        timed_out: int = 0,
        cancelled: int = 0,
        crashed: int = 0,
        retried: int = 0,
        run_count: int = 0,
        run_total: float = 0.0,
        run_max: float = 0.0,
        wait_count: int = 0,
        wait_total: float = 0.0,
        wait_max: float = 0.0,
        run_hist: dict[int, int] | None = None,
        wait_hist: dict[int, int] | None = None,
    ) -> None:
        self.completed = completed
        self.failed = failed
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.crashed = crashed
        self.retried = retried
        self.run_count = run_count
        self.run_total = run_total
        self.run_max = run_max
        self.wait_count = wait_count
        self.wait_total = wait_total
        self.wait_max = wait_max
        self.run_hist: dict[int, int] = {} if run_hist is None else run_hist
        self.wait_hist: dict[int, int] = {} if wait_hist is None else wait_hist

    def __repr__(self) -> str:
        return f"Tally({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

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
        from ._snapshots import TimingSummary

        n = self.count
        p50, p90, p99 = percentiles(self.hist, n, self.max)
        return TimingSummary(n, self.total / n if n else 0.0, self.max, p50, p90, p99)


class LaneStats:
    """The live figures of one lane. Read them with `Scheduler.stats()`.

    `live`: lanes that can count running/waiting tasks on demand set this instead of
    adjusting the gauges on every task; `extra`: counters kept elsewhere (the process
    pool's kills), read on demand; `threads`: worker threads alive (blocking lane);
    `resources`: the cpu workers' memory and CPU time, read on demand.
    """

    def __init__(
        self,
        kind: str,
        capacity: int,
        running: int = 0,
        waiting: int = 0,
        limited: int = 0,
        *,
        live: Callable[[], tuple[int, int]] | None = None,
        extra: Callable[[], dict[str, int]] | None = None,
        threads: Callable[[], int] | None = None,
        resources: Callable[[], WorkerResources] | None = None,
    ) -> None:
        self.kind = kind
        self.capacity = capacity
        self.running = running
        self.waiting = waiting
        #: Tasks admitted but waiting for a limiter: the lane runner bumps it with
        #: `adjust(limited=...)`.
        self.limited = limited
        self.total = Tally()
        self.lock = threading.Lock()
        self.live = live
        self.extra = extra
        self.threads = threads
        self.resources = resources
        self._run = _Figure()
        self._wait = _Figure()
        self._lag = _Figure()

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
        from ._snapshots import LaneSnapshot, WorkerResources

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


def __getattr__(name: str) -> Any:
    # The snapshot types, for code that imports them from here (they live in
    # `_snapshots`, imported on first use).
    if name in ("LaneSnapshot", "TimingSummary", "WorkerResources"):
        from . import _snapshots

        return getattr(_snapshots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
