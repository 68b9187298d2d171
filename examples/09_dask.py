"""Dask: the cpu lane on a ``distributed`` cluster, with the same API.

``Scheduler(cpu_executor=client.get_executor())`` sends the cpu lane's tasks to the
cluster instead of local processes; nothing else changes. Here the cluster is a
small ``LocalCluster``; point ``Client`` at a real scheduler's address to use many
machines.

One difference: a Dask task that is already running cannot be killed. A task that
overruns its ``timeout`` still fails with ``TaskTimeout`` at once (its result is
dropped), but the worker finishes it in the background.

Run: python examples/09_dask.py   (the cluster takes a few seconds to start)
"""

from __future__ import annotations

import os
import time

from distributed import Client, LocalCluster

from tasklanes import Scheduler, TaskTimeout, call


def simulate(seed: int, steps: int) -> float:
    """A Monte Carlo walk: pure Python, CPU-bound."""
    x, state = 0.0, seed
    for _ in range(steps):
        state = (state * 1103515245 + 12345) % 2**31
        x += (state / 2**31) - 0.5
    return x


def main() -> None:
    # Two worker processes, one thread each: CPU work needs processes (the GIL).
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
        # pure=False: Dask would otherwise compute identical calls only once.
        Scheduler(cpu_executor=client.get_executor(pure=False), cpu_limit=2) as sched,
    ):
        start = time.perf_counter()
        walks = sched.run_all_sync(
            [call(simulate, seed, 20_000) for seed in range(16)], kind="cpu", timeout=30
        )
        took = time.perf_counter() - start
        assert walks == [simulate(seed, 20_000) for seed in range(16)]
        workers = client.run(os.getpid)  # {worker address: its process id}
        assert len(workers) == 2 and os.getpid() not in workers.values()
        print(f"16 simulations on the Dask cluster ({len(workers)} worker processes) "
              f"in {took:.2f} s")

        outcomes = sched.run_all_sync(
            [call(simulate, 1, 100), call(time.sleep, 0.5)], kind="cpu", timeout=0.2,
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], TaskTimeout)
        print(f"an overrunning Dask task: {outcomes[1]!r} (the worker finishes it anyway)")
        time.sleep(0.5)  # let the worker finish that abandoned task before shutting down
        stats = sched.stats()["cpu"]
        print(f"cpu lane stats: completed={stats.completed} timed_out={stats.timed_out}")


if __name__ == "__main__":
    main()
