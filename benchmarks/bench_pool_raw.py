"""Quick timings of the raw process pool engine (no event loop, no public API).

    PYTHONPATH=src python benchmarks/bench_pool_raw.py [--rounds 5]

Prints: pool start (first one-task job, forkserver and workers included), 20k trivial
tasks on a warm pool, 8 x 0.11 s of pure-Python work next to
``ProcessPoolExecutor(2).map``, and the 40-task crash case. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import _pool_tasks as T
from tasklanes._errors import WorkerCrashed
from tasklanes._processes._pool import ProcessPool


def calibrate(seconds: float) -> int:
    """How many iterations of ``T.burn`` take ``seconds`` here."""
    n = 100_000
    while True:
        t0 = time.perf_counter()
        T.burn(n)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            return int(n * seconds / elapsed)
        n *= 2


def run(pool: ProcessPool, tasks: list[Callable[[], object]], limit: int = 2) -> list[object]:
    out: dict[int, object] = {}
    done = threading.Event()

    def deliver(batch: list[tuple[int, bool, object]]) -> None:
        for index, _, value in batch:
            out[index] = value

    job = pool.open_job(limit=limit, timeout=None, deliver=deliver, on_settled=done.set)
    job.put(0, list(tasks))
    job.close_input()
    done.wait()
    return [out[i] for i in range(len(tasks))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    pool = ProcessPool(2)
    run(pool, [functools.partial(T.inc, 1)])
    first = time.perf_counter() - t0
    deadline = time.monotonic() + 10
    while pool.stats()["workers"] < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    both = time.perf_counter() - t0
    print(f"pool start: first result {first * 1e3:.1f} ms, 2 workers ready {both * 1e3:.1f} ms")

    times = []
    for _ in range(args.rounds):
        tasks: list[Callable[[], object]] = [functools.partial(T.inc, i) for i in range(20_000)]
        t0 = time.perf_counter()
        results = run(pool, tasks)
        times.append(time.perf_counter() - t0)
        assert results == [i + 1 for i in range(20_000)]
    print(
        f"20k trivial, warm: median {statistics.median(times) * 1e3:.1f} ms "
        f"(min {min(times) * 1e3:.1f} ms)"
    )

    n = calibrate(0.11)
    ours, ppe = [], []
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        list(executor.map(T.inc, range(4)))  # warm
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            run(pool, [functools.partial(T.burn, n) for _ in range(8)])
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            list(executor.map(T.burn, [n] * 8))
            ppe.append(time.perf_counter() - t0)
    a, b = statistics.median(ours), statistics.median(ppe)
    print(f"8 x 0.11 s: ours {a:.3f} s, ProcessPoolExecutor(2).map {b:.3f} s, ratio {a / b:.2f}")

    results = run(pool, [functools.partial(T.exit_if, i, 10) for i in range(40)])
    survived = sum(1 for i, r in enumerate(results) if i != 10 and r == i)
    crashed = isinstance(results[10], WorkerCrashed)
    print(f"crash case: {survived}/39 others completed, task 10 WorkerCrashed: {crashed}")
    print("stats:", pool.stats())
    pool.close()


if __name__ == "__main__":
    main()
