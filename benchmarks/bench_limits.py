"""Limits, rate limits and retries (issue 11): rate accuracy and overhead.

1. Rate accuracy: a batch of `burst + rate * duration` trivial io tasks behind a
   `Limiter(rate=..., burst=...)`; the measured rate is `(n - burst) / (last start -
   first start)`, i.e. the steady rate after the initial burst. On asyncio, uvloop,
   trio, and with 4 threads (each its own asyncio loop) sharing one Limiter; compared
   with aiometer's `max_per_second` and aiolimiter's `AsyncLimiter` on asyncio.
2. Overhead: the same batch with `limiter=Limiter(concurrency=1000)` (never binding)
   and with `retry=3` (never failing) against none, io and blocking lanes, medians of
   alternating rounds.

    python benchmarks/bench_limits.py [--duration 10] [--rounds 5] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import anyio

from tasklanes import Limiter, call, run_all

RATE_CASES = [(10.0, 1), (50.0, 1), (1000.0, 10)]


async def _noop() -> None:
    return None


# -- rate accuracy --------------------------------------------------------------------


def _measured(starts: list[float], burst: int) -> float:
    starts.sort()
    return (len(starts) - burst) / (starts[-1] - starts[0])


async def _tasklanes_batch(limiter: Limiter, n: int, starts: list[float]) -> None:
    async def task() -> None:
        starts.append(time.monotonic())

    await run_all([task] * n, limiter=limiter, limit=100)


def tasklanes_rate(runtime: str, rate: float, burst: int, duration: float) -> float:
    limiter = Limiter(rate=rate, burst=burst)
    n = int(burst + rate * duration)
    starts: list[float] = []
    if runtime == "4 threads":
        share = [n // 4 + (1 if i < n % 4 else 0) for i in range(4)]
        threads = [
            threading.Thread(
                target=asyncio.run, args=(_tasklanes_batch(limiter, k, starts),)
            )
            for k in share
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif runtime == "uvloop":
        import uvloop

        uvloop.run(_tasklanes_batch(limiter, n, starts))
    elif runtime == "trio":
        anyio.run(_tasklanes_batch, limiter, n, starts, backend="trio")
    else:
        asyncio.run(_tasklanes_batch(limiter, n, starts))
    return _measured(starts, burst)


def aiometer_rate(rate: float, burst: int, duration: float) -> float:
    import aiometer

    n = int(burst + rate * duration)
    starts: list[float] = []

    async def task() -> None:
        starts.append(time.monotonic())

    asyncio.run(aiometer.run_all([task] * n, max_at_once=100, max_per_second=rate))
    return _measured(starts, 1)  # aiometer has no burst


def aiolimiter_rate(rate: float, burst: int, duration: float) -> float:
    from aiolimiter import AsyncLimiter

    n = int(burst + rate * duration)
    starts: list[float] = []

    async def main() -> None:
        # `burst` starts per `burst / rate` seconds: the same long-run rate and burst.
        limiter = AsyncLimiter(burst, burst / rate)
        sem = asyncio.Semaphore(100)

        async def task() -> None:
            async with sem, limiter:
                starts.append(time.monotonic())

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(task())

    asyncio.run(main())
    return _measured(starts, burst)


def rate_table(duration: float) -> list[dict[str, Any]]:
    rows = []
    runtimes = ["asyncio", "uvloop", "trio", "4 threads"]
    for rate, burst in RATE_CASES:
        for runtime in runtimes:
            got = tasklanes_rate(runtime, rate, burst, duration)
            rows.append({"who": "tasklanes", "runtime": runtime, "rate": rate, "burst": burst,
                         "measured": got})
            print(f"  tasklanes {runtime:9} rate {rate:6g} burst {burst:2}: {got:9.2f}/s "
                  f"({(got / rate - 1) * 100:+.2f}%)", flush=True)
        for who, fn in (("aiometer", aiometer_rate), ("aiolimiter", aiolimiter_rate)):
            try:
                got = fn(rate, burst, duration)
            except ImportError:
                continue
            rows.append({"who": who, "runtime": "asyncio", "rate": rate, "burst": burst,
                         "measured": got})
            print(f"  {who:9} asyncio   rate {rate:6g} burst {burst:2}: {got:9.2f}/s "
                  f"({(got / rate - 1) * 100:+.2f}%)", flush=True)
    return rows


# -- overhead ----------------------------------------------------------------------------


def _sleep_5ms() -> None:
    time.sleep(0.005)


def _trivial() -> None:
    return None


async def _sleep_10ms() -> None:
    await asyncio.sleep(0.01)


async def _sleep0() -> None:
    await asyncio.sleep(0)


def _timed(fn: Callable[[], Coroutine[Any, Any, Any]]) -> float:
    t0 = time.perf_counter()
    asyncio.run(fn())
    return time.perf_counter() - t0


def overhead_table(rounds: int, quick: bool) -> list[dict[str, Any]]:
    scale = 0.2 if quick else 1.0
    cases: list[tuple[str, str, int, int, Callable[[], Any]]] = [
        ("io", "asyncio.sleep(0)", int(20_000 * scale), 1000, _sleep0),
        ("io", "asyncio.sleep(0.01)", int(5_000 * scale), 1000, _sleep_10ms),
        ("blocking", "trivial", int(5_000 * scale), 40, _trivial),
        ("blocking", "time.sleep(0.005)", int(800 * scale), 40, _sleep_5ms),
    ]
    rows = []
    for kind, what, n, limit, fn in cases:
        variants: dict[str, dict[str, Any]] = {
            "none": {},
            "limiter": {"limiter": Limiter(concurrency=1000)},
            "retry=3": {"retry": 3},
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, extra in variants.items():
                tasks = [call(fn)] * n
                run = functools.partial(run_all, tasks, kind, limit, **extra)
                times[name].append(_timed(run))
        base = statistics.median(times["none"])
        row = {"lane": kind, "task": what, "n": n, "limit": limit,
               "none_s": base}
        for name in ("limiter", "retry=3"):
            med = statistics.median(times[name])
            row[f"{name}_s"] = med
            row[f"{name}_ratio"] = med / base
        rows.append(row)
        print(f"  {kind:8} {n:6} x {what:20} none {base * 1e3:8.1f} ms | limiter "
              f"{row['limiter_s'] * 1e3:8.1f} ms ({row['limiter_ratio']:.2f}x) | retry=3 "
              f"{row['retry=3_s'] * 1e3:8.1f} ms ({row['retry=3_ratio']:.2f}x)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate case")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    rounds = 2 if args.quick else args.rounds
    out: dict[str, Any] = {}
    if not args.skip_rate:
        print(f"rate accuracy (steady starts/s after the burst, over {duration:g} s):")
        out["rate"] = rate_table(duration)
    if not args.skip_overhead:
        print(f"overhead (medians of {rounds} alternating rounds):")
        out["overhead"] = overhead_table(rounds, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
