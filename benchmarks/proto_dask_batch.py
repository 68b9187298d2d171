"""Issue 14, Dask case: where the cpu lane's time goes on a Dask cluster, and what
batching would gain. A standalone prototype on the Dask client (no tasklanes code).

    python benchmarks/proto_dask_batch.py [--n 200] [--rounds 5] [--threads]

tasklanes' executor lane (``Scheduler(cpu_executor=client.get_executor())``) calls
``executor.submit`` once per task and keeps ``2 x cluster threads`` tasks in flight
(``executor_capacity``). Contenders, alternated round by round, medians:

* ``submit, window 4``: that shape (one submit per task, refill as each completes);
* ``submit, window 64`` and ``submit all``: the same with a wider window;
* ``client.map in chunks of k``: the batched shape a lane could use -- one
  ``client.map`` (one message to the scheduler) per chunk of k tasks, each task its
  own future, so per-task results, errors and streaming stay as they are;
* ``one client.map, as_completed per future``: one message, per-task completion
  handling (what a lane that keeps per-task outcomes would pay);
* ``results in batches``: futures as above, results fetched with
  ``as_completed(with_results=True).batches()`` (one transfer for many futures);
* ``client.map + gather``: issue 14's yardstick.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tasks as B


def windowed_submit(executor: Any, n: int, window: int) -> list[Any]:
    """One ``executor.submit`` per task, at most ``window`` in flight (the lane's shape)."""
    results: list[Any] = [None] * n
    done = threading.Semaphore(0)
    inflight = 0
    finished = 0
    nxt = 0

    def on_done(i: int) -> Callable[[Any], None]:
        def cb(f: Any) -> None:
            results[i] = f.result()
            done.release()
        return cb

    while finished < n:
        while nxt < n and inflight < window:
            executor.submit(B.inc, nxt).add_done_callback(on_done(nxt))
            nxt += 1
            inflight += 1
        done.acquire()
        inflight -= 1
        finished += 1
    return results


def chunked_map(client: Any, n: int, chunk: int, window_chunks: int = 4) -> list[Any]:
    """``client.map`` per chunk of ``chunk`` tasks, ``window_chunks`` chunks in flight;
    per-task futures, results collected as they complete."""
    from distributed import as_completed

    results: list[Any] = [None] * n
    index: dict[Any, int] = {}
    ac = as_completed()
    nxt = 0

    def submit_chunk() -> None:
        nonlocal nxt
        ids = list(range(nxt, min(n, nxt + chunk)))
        nxt += len(ids)
        for i, fut in zip(ids, client.map(B.inc, ids, pure=False), strict=True):
            index[fut] = i
            ac.add(fut)

    for _ in range(window_chunks):
        if nxt < n:
            submit_chunk()
    remaining = n
    for fut in ac:
        results[index.pop(fut)] = fut.result()  # an error would surface per task here
        remaining -= 1
        if nxt < n and ac.count() < (window_chunks - 1) * chunk:
            submit_chunk()
        if not remaining:
            break
    return results


def map_batched_results(client: Any, n: int, chunk: int) -> list[Any]:
    """``client.map`` per chunk of ``chunk`` tasks, all submitted at once; results
    fetched in batches as they complete (``as_completed(with_results=True).batches()``:
    one transfer for many futures, instead of one ``future.result()`` round trip each)."""
    from distributed import as_completed

    results: list[Any] = [None] * n
    index: dict[Any, int] = {}
    for start in range(0, n, chunk):
        ids = list(range(start, min(n, start + chunk)))
        for i, fut in zip(ids, client.map(B.inc, ids, pure=False), strict=True):
            index[fut] = i
    for batch in as_completed(list(index), with_results=True).batches():
        for fut, value in batch:
            results[index[fut]] = value  # a failed task would arrive as its exception
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", action="store_true", help="in-process worker threads")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    n = args.n
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=not args.threads,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    executor = client.get_executor(pure=False)
    contenders: dict[str, Callable[[], list[Any]]] = {
        "submit, window 4 (the lane today)": lambda: windowed_submit(executor, n, 4),
        "submit, window 64": lambda: windowed_submit(executor, n, 64),
        "submit all (window n)": lambda: windowed_submit(executor, n, n),
        "client.map in chunks of 25, 4 chunks in flight": lambda: chunked_map(client, n, 25),
        "client.map in chunks of 50, 4 chunks in flight": lambda: chunked_map(client, n, 50),
        "client.map in 2 blocks of n/2, both in flight":
            lambda: chunked_map(client, n, -(-n // 2), 2),
        "one client.map, as_completed per future": lambda: chunked_map(client, n, n, 1),
        "one client.map, results in batches as completed":
            lambda: map_batched_results(client, n, n),
        "client.map in chunks of 50, results in batches": lambda: map_batched_results(client, n, 50),
        "client.map + gather (yardstick)":
            lambda: client.gather(client.map(B.inc, range(n), pure=False)),
    }
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
        client.close()
        cluster.close()
    base = statistics.median(runs["client.map + gather (yardstick)"])
    print(f"{n} trivial tasks on a LocalCluster (2 workers, "
          f"{'threads' if args.threads else 'processes'}), medians of {args.rounds}:")
    for name, xs in runs.items():
        m = statistics.median(xs)
        print(f"  {name:<50} {m * 1e3:8.1f} ms  {m / n * 1e6:8.0f} us/task  "
              f"ratio to yardstick {m / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
