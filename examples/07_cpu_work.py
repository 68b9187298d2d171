"""CPU-heavy work across cores: from a plain script and from async code.

Pure-Python computing holds the GIL, so threads take turns instead of running
together: computing needs processes, the ``"cpu"`` lane. A cpu task must pickle:
a module-level function bound with ``call`` (or ``functools.partial``).

Run: python examples/07_cpu_work.py
"""

from __future__ import annotations

import os
import time

import anyio

from tasklanes import Scheduler, amap, call, get_scheduler, run_all, run_all_sync


def count_primes(start: int, stop: int) -> int:
    """Pure Python: it never waits, it computes."""
    return sum(all(i % d for d in range(2, int(i**0.5) + 1)) for i in range(max(start, 2), stop))


def chunks(stop: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, stop)) for i in range(0, stop, size)]


def count_chunk(part: tuple[int, int]) -> int:
    return count_primes(*part)


async def from_async_code(parts: list[tuple[int, int]]) -> int:
    # As a batch...
    counts = await run_all([call(count_primes, a, b) for a, b in parts], kind="cpu")
    # ...or as a stream of results (in input order) from fn(item) for each item.
    async with amap(count_chunk, parts, kind="cpu") as stream:
        streamed = [count async for count in stream]
    assert streamed == counts
    return sum(counts)


def main() -> None:
    stop = 200_000
    parts = chunks(stop, 12_500)
    cores = get_scheduler().capacity("cpu")
    print(f"counting primes below {stop:,} in {len(parts)} chunks, on {cores} processes "
          f"(this machine has {os.cpu_count()} CPUs)")

    start = time.perf_counter()
    serial = sum(count_primes(a, b) for a, b in parts)
    t_serial = time.perf_counter() - start

    get_scheduler().run_all_sync([call(count_primes, 0, 10)], kind="cpu")  # start the workers
    start = time.perf_counter()
    counts = run_all_sync([call(count_primes, a, b) for a, b in parts], kind="cpu")
    t_cpu = time.perf_counter() - start
    assert sum(counts) == serial == 17_984

    # The same from async code.
    start = time.perf_counter()
    total = anyio.run(from_async_code, parts)
    t_async = time.perf_counter() - start
    assert total == serial

    # Threads do not help: the GIL lets one thread compute at a time.
    with Scheduler(blocking_limit=cores) as sched:
        start = time.perf_counter()
        sched.run_all_sync([call(count_primes, a, b) for a, b in parts], kind="blocking")
        t_threads = time.perf_counter() - start

    print(f"one after another:        {t_serial:.2f} s")
    print(f"kind='blocking' (threads): {t_threads:.2f} s  <- the GIL: no faster")
    print(f"kind='cpu' (processes):    {t_cpu:.2f} s  <- {t_serial / t_cpu:.1f}x")
    print(f"kind='cpu' from async:     {t_async:.2f} s (run_all, then amap)")


if __name__ == "__main__":
    main()
