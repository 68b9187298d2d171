"""Module-level task functions shared by the benchmarks.

Worker processes (tasklanes' own pool, ProcessPoolExecutor, joblib/loky, mpire, pebble,
anyio.to_process) import tasks by reference, so they live in an importable module;
``benchmarks/run.py`` puts this directory on ``PYTHONPATH`` for every child process.
"""

from __future__ import annotations

import functools
import os
import time


def noop() -> None:
    """A trivial sync call (the blocking lane's per-task overhead)."""
    return None


def sleep_5ms() -> None:
    time.sleep(0.005)


def inc(x: int) -> int:
    """A trivial cpu task."""
    return x + 1


def burn(n: int) -> int:
    """A fixed amount of pure-Python work (calibrate ``n`` with :func:`calibrate`)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def exit_if(x: int, bad: int) -> int:
    """Task ``bad`` kills its worker process; the others return their index.

    The short sleep keeps several tasks in flight when the crash happens.
    """
    time.sleep(0.01)
    if x == bad:
        os._exit(1)
    return x


@functools.cache
def calibrate(seconds: float) -> int:
    """How many iterations of :func:`burn` take ``seconds`` on this machine."""
    n = 50_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            best = elapsed
            for _ in range(2):  # best of three: the machine is shared
                t0 = time.perf_counter()
                burn(n)
                best = min(best, time.perf_counter() - t0)
            return max(1, int(n * seconds / best))
        n *= 2


def big_bytes(n: int) -> bytes:
    """A large cpu result (``n`` bytes): the big-result memory and copy case."""
    return b"x" * n
