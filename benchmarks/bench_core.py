"""Core speed targets (issue: io and blocking lanes), side by side with the peers.

Each case runs tasklanes and its peer alternately in one process (A B A B ...),
several rounds, and reports the medians and the ratio of medians. Run:

    python benchmarks/bench_core.py [--rounds 7] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import tasklanes
from tasklanes import call, run_all


def trivial_sync() -> None:
    return None


def sleep_5ms() -> None:
    time.sleep(0.005)


# -- io peers ---------------------------------------------------------------------


async def hand_workers(n: int, workers: int, coro: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """The hand-written baseline: ``workers`` tasks pulling from ``iter(range(n))``."""
    it = iter(range(n))
    results: list[Any] = [None] * n

    async def worker() -> None:
        for i in it:
            results[i] = await coro()

    async with asyncio.TaskGroup() as tg:
        for _ in range(workers):
            tg.create_task(worker())


async def aiometer_run_all(n: int, limit: int) -> None:
    import functools

    import aiometer

    await aiometer.run_all([functools.partial(asyncio.sleep, 0) for _ in range(n)], max_at_once=limit)


def sleep0() -> Coroutine[Any, Any, None]:
    return asyncio.sleep(0)


def sleep10ms() -> Coroutine[Any, Any, None]:
    return asyncio.sleep(0.01)


async def ours_io(n: int, limit: int, timeout: float | None, coro: Callable[[], Any]) -> None:
    await run_all((coro() for _ in range(n)), limit=limit, timeout=timeout)


# -- the harness ----------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def pair(
    name: str,
    ours: Callable[[], Any],
    peer: Callable[[], Any],
    peer_name: str,
    rounds: int,
    per: int,
    target: float,
) -> dict[str, Any]:
    ours()
    peer()  # warm up both (pools started, code paths hot)
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(timed(ours))
        b.append(timed(peer))
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = statistics.median([x / y for x, y in zip(a, b, strict=True)])
    row = {
        "case": name,
        "peer": peer_name,
        "tasklanes_s": ma,
        "peer_s": mb,
        "tasklanes_us_per_task": ma / per * 1e6,
        "peer_us_per_task": mb / per * 1e6,
        "ratio": ratio,
        "target": target,
        "met": ratio <= target,
    }
    print(
        f"{name:<44} tasklanes {ma * 1e3:9.2f} ms ({row['tasklanes_us_per_task']:6.2f} us/task)"
        f"  {peer_name:<28} {mb * 1e3:9.2f} ms  ratio {ratio:5.2f} (target <= {target})"
        f"  {'met' if row['met'] else 'MISSED'}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--json", default=None)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = parser.parse_args()
    scale = 100 if args.quick else 1
    rounds = 2 if args.quick else args.rounds
    if args.loop == "uvloop":
        import uvloop

        runner: Callable[[Coroutine[Any, Any, Any]], Any] = uvloop.run
    else:
        runner = asyncio.run
    rows = []
    n = 100_000 // scale

    def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Callable[[], Any]:
        return lambda: runner(coro_fn())

    rows.append(pair(
        f"io: {n} trivial coroutines, limit 1000",
        run(lambda: ours_io(n, 1000, None, sleep0)),
        run(lambda: hand_workers(n, 1000, sleep0)), "hand-written 1000 workers",
        rounds, n, 2.5,
    ))
    try:
        import aiometer  # noqa: F401

        rows.append(pair(
            f"io: {n} trivial coroutines, limit 1000",
            run(lambda: ours_io(n, 1000, None, sleep0)),
            run(lambda: aiometer_run_all(n, 1000)), "aiometer.run_all",
            rounds, n, 0.2,
        ))
    except ImportError:
        print("aiometer not installed: pip install 'tasklanes[bench]'")
    rows.append(pair(
        f"io: {n} trivial coroutines, timeout=10",
        run(lambda: ours_io(n, 1000, 10.0, sleep0)),
        run(lambda: hand_workers(n, 1000, sleep0)), "hand-written, no timeouts",
        rounds, n, 5.0,
    ))
    m = 10_000 // scale
    rows.append(pair(
        f"io: {m} x 10 ms sleeps, limit 1000",
        run(lambda: ours_io(m, 1000, None, sleep10ms)),
        run(lambda: hand_workers(m, 1000, sleep10ms)), "hand-written 1000 workers",
        rounds, m, 1.2,
    ))
    k = 10_000 // scale
    pool = ThreadPoolExecutor(40)
    rows.append(pair(
        f"blocking: {k} trivial sync calls, limit 40",
        run(lambda: run_all([call(trivial_sync) for _ in range(k)], kind="blocking", limit=40)),
        lambda: list(pool.map(lambda _: trivial_sync(), range(k))), "ThreadPoolExecutor(40).map",
        rounds, k, 1.5,
    ))
    s = 2000 // scale
    rows.append(pair(
        f"blocking: {s} x time.sleep(0.005), limit 40",
        run(lambda: run_all([call(sleep_5ms) for _ in range(s)], kind="blocking", limit=40)),
        lambda: list(pool.map(lambda _: sleep_5ms(), range(s))), "ThreadPoolExecutor(40).map",
        rounds, s, 1.15,
    ))
    pool.shutdown()
    tasklanes.get_scheduler().close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "loop": args.loop, "rounds": rounds, "rows": rows,
            }, f, indent=2)


if __name__ == "__main__":
    main()
