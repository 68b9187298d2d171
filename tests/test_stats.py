"""The lanes' figures: percentiles from the log-bucket histogram, and the overload figures."""

from __future__ import annotations

import math
import os
import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasklanes
from tasklanes import call, run_all
from tasklanes._processes._workers import cpu_seconds, rss_bytes
from tasklanes._stats import (
    BUCKETS,
    FLOOR,
    GAMMA,
    LaneStats,
    Tally,
    percentiles,
    record,
    record_all,
)

from ._tasks import double

QS = (0.5, 0.9, 0.99)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def close_enough(estimate: float, truth: float) -> bool:
    return abs(estimate - truth) <= max(0.05 * truth, FLOOR)


durations = st.floats(min_value=0.0, max_value=1e5, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(durations, min_size=1, max_size=400), st.integers(1, 5))
def test_percentiles_within_5_percent_of_exact_and_never_above_max(
    values: list[float], batches: int
) -> None:
    stats = LaneStats("io", 1)
    tally = Tally()
    # Several batches merging their own tallies, as the lanes do.
    for k, v in enumerate(values):
        tally.run(v)
        tally.wait(v)
        if k % batches == 0:
            stats.merge(tally)
    stats.merge(tally)
    snap = stats.snapshot()
    for figure in (snap.run, snap.wait):
        assert figure.count == len(values)
        assert figure.max == max(values)
        for q, got in zip(QS, (figure.p50, figure.p90, figure.p99), strict=True):
            assert got <= figure.max
            assert close_enough(got, exact(values, q)), (q, got, exact(values, q))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(durations, st.integers(1, 50)), min_size=1, max_size=50))
def test_weighted_records_match_repeated_values(pairs: list[tuple[float, int]]) -> None:
    hist: dict[int, int] = {}
    for v, n in pairs:
        record(hist, v, n)
    merged = [0] * BUCKETS
    for k, c in hist.items():
        merged[min(k, BUCKETS - 1)] += c
    values = [v for v, n in pairs for _ in range(n)]
    got = percentiles(merged, len(values), max(values))
    for q, estimate in zip(QS, got, strict=True):
        assert close_enough(estimate, exact(values, q))


def test_memory_is_fixed_whatever_the_count() -> None:
    tally = Tally()
    for k in range(200_000):
        tally.run(1e-6 * (1 + k % 5000))
    assert len(tally.run_hist) < BUCKETS
    stats = LaneStats("io", 1)
    stats.merge(tally)
    assert len(stats.histograms()["run"][0]) == BUCKETS
    assert tally.run_count == 0 and not tally.run_hist, "merge resets the tally in place"


def test_empty_lane_reads_zeros() -> None:
    snap = LaneStats("cpu", 2).snapshot()
    assert (snap.run.p50, snap.run.p90, snap.run.p99) == (0.0, 0.0, 0.0)
    assert snap.error_rate == 0.0
    assert snap.limited == 0 and snap.threads == 0
    assert snap.loop_lag.count == 0
    assert snap.workers.workers == 0 and snap["workers"].memory == 0


def test_error_rate_counts_failed_timed_out_and_crashed_over_finished() -> None:
    stats = LaneStats("cpu", 2)
    tally = Tally(completed=6, failed=1, timed_out=1, crashed=2, cancelled=5)
    stats.merge(tally)
    assert stats.snapshot().error_rate == pytest.approx(0.4)


def one_by_one(values: list[float]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for v in values:
        record(hist, v)
    return hist


# Durations as run times come: clustered (alike tasks), spread, zeros, and values within
# rounding of a bucket's bound (where sorting and bisecting could disagree with `record`).
bounds = st.integers(1, 1300).map(lambda k: FLOOR * GAMMA**k)
near_bounds = st.tuples(bounds, st.sampled_from([1 - 2e-16, 1.0, 1 + 2e-16, GAMMA])).map(
    lambda pair: pair[0] * pair[1]
)
clustered = st.floats(1e-3, 2e-3).flatmap(
    lambda base: st.lists(st.floats(base, base * 1.2), min_size=1, max_size=600)
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        clustered,
        st.lists(durations, min_size=0, max_size=600),
        st.lists(st.one_of(near_bounds, st.sampled_from([0.0, FLOOR, FLOOR / 2])), max_size=200),
    )
)
def test_record_all_buckets_exactly_as_record_does(values: list[float]) -> None:
    hist: dict[int, int] = {5: 1}  # it adds to what is there
    times = list(values)
    record_all(hist, times)
    expected = one_by_one(values)
    expected[5] = expected.get(5, 0) + 1
    assert hist == expected
    assert times == [], "it empties the list it was given"


def test_limited_is_a_counter_the_runner_bumps() -> None:
    stats = LaneStats("io", 4)
    stats.adjust(limited=3)
    stats.adjust(limited=-1)
    assert stats.snapshot().limited == 2


def test_process_resources_reads_this_process() -> None:
    memory = rss_bytes(os.getpid())
    cpu_time = cpu_seconds(os.getpid())
    assert memory is not None and memory > 1_000_000
    assert cpu_time is not None and cpu_time > 0.0
    assert rss_bytes(2**22 + 12345) is None  # no such pid
    assert cpu_seconds(2**22 + 12345) is None


@pytest.mark.anyio
async def test_lanes_report_percentiles(scheduler: tasklanes.Scheduler) -> None:
    async def nap(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    await run_all([nap(0.01) for _ in range(20)] + [nap(0.2)], scheduler=scheduler)
    await run_all([call(time.sleep, 0.02) for _ in range(10)], kind="blocking", scheduler=scheduler)
    stats = scheduler.stats()
    io = stats["io"].run
    assert io.count == 21
    assert 0.008 <= io.p50 <= io.p90 <= io.p99 <= io.max  # uvloop: up to 1 ms early
    assert io.p50 < 0.15, "the median is one of the twenty short naps"
    blocking = stats["blocking"].run
    assert 0.019 <= blocking.p50 <= blocking.max
    assert stats["blocking"].threads >= 1
    assert stats["io"].error_rate == 0.0


@pytest.mark.anyio
async def test_io_lane_samples_the_loop_lag(scheduler: tasklanes.Scheduler) -> None:
    async def hold_the_loop() -> None:
        await anyio.sleep(0.15)
        time.sleep(0.3)  # blocks the loop: the sampler wakes late

    async def idle() -> None:
        await anyio.sleep(0.5)

    await run_all([hold_the_loop(), idle()], scheduler=scheduler)
    lag = scheduler.stats()["io"].loop_lag
    assert lag.count >= 1
    assert lag.max >= 0.1
    assert lag.p99 <= lag.max


@pytest.mark.anyio
async def test_cpu_lane_reports_worker_resources(scheduler: tasklanes.Scheduler) -> None:
    assert await run_all([call(double, k) for k in range(8)], kind="cpu", scheduler=scheduler) == [
        2 * k for k in range(8)
    ]
    cpu = scheduler.stats()["cpu"]
    assert cpu.workers.workers >= 1
    assert cpu.workers.memory > 1_000_000
    assert cpu.run.count == 8 and cpu.run.p99 <= cpu.run.max
