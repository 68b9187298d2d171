"""Issue 14's Dask case on its own: the cpu lane on a Dask LocalCluster (2 process
workers) against Dask's ``client.map`` + ``client.gather``, alternated round by round.

    python benchmarks/bench_dask.py [--n 200] [--rounds 5] [--limits 16,64]

Prints each contender's median and its ratio to ``client.map`` + ``gather`` (issue
14's target for the default row: <= 1.2). ``--limits`` adds rows with ``cpu_limit=``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks as B


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limits", default="", help="extra rows with cpu_limit=, e.g. 16,64")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from tasklanes import Scheduler, call

    n = args.n
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    executor = client.get_executor(pure=False)
    schedulers = {"default": Scheduler(cpu_executor=executor)}
    for limit in filter(None, args.limits.split(",")):
        schedulers[f"cpu_limit={limit}"] = Scheduler(cpu_executor=executor, cpu_limit=int(limit))

    def ours(sched: Scheduler) -> Callable[[], list[Any]]:
        async def go() -> list[Any]:
            return await sched.run_all([call(B.inc, i) for i in range(n)], kind="cpu")

        return lambda: asyncio.run(go())

    contenders: dict[str, Callable[[], list[Any]]] = {
        f"tasklanes cpu_executor=Dask, {name}": ours(s) for name, s in schedulers.items()
    }
    contenders["Dask client.map + gather"] = lambda: client.gather(
        client.map(B.inc, range(n), pure=False))
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    try:
        for fn in contenders.values():  # warm-up
            assert fn() == [i + 1 for i in range(n)]
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
    finally:
        for s in schedulers.values():
            s.close()
        client.close()
        cluster.close()
    base = statistics.median(runs["Dask client.map + gather"])
    print(f"{n} trivial tasks on a LocalCluster (2 process workers), medians of {args.rounds}:")
    for name, xs in runs.items():
        m = statistics.median(xs)
        print(f"  {name:<48} {m * 1e3:8.1f} ms  {m / n * 1e3:6.2f} ms/task  "
              f"ratio {m / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
