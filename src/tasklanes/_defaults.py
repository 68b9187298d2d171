"""Every default capacity and start method, each worked out in exactly one place.

The Scheduler's signature names `IO_LIMIT` and `BLOCKING_LIMIT`; the cpu lane's
capacity and the process pool's start method are resolved here, once per
Scheduler, and handed to the lanes (which never guess a default of their own).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import Executor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Annotations only: importing multiprocessing costs a few milliseconds that a
    # script using the io or blocking lanes alone would otherwise pay.
    from multiprocessing.context import BaseContext

__all__ = [
    "ADVICE_THRESHOLD",
    "BLOCKING_LIMIT",
    "DASK_IN_FLIGHT",
    "IO_LIMIT",
    "check_advice_options",
    "cpu_capacity",
    "dask_threads",
    "default_cpu_count",
    "mp_context",
]

#: Tasks of the io lane running at once, per event loop.
IO_LIMIT = 1000
#: Worker threads of the blocking lane.
BLOCKING_LIMIT = 40
#: Tasks in flight on a Dask executor at least (see `executor_capacity`).
DASK_IN_FLIGHT = 256
#: Seconds an io task may hold the event loop before kind advice (`_advice`).
ADVICE_THRESHOLD = 0.1


def check_advice_options(advice: object, threshold: object) -> float:
    """Validate `Scheduler(advice=, advice_threshold=)`; return the threshold as a float."""
    if not isinstance(advice, bool):
        raise TypeError(f"advice must be True or False, got {type(advice).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(
            f"advice_threshold must be a number of seconds, got {type(threshold).__name__}"
        )
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(
            f"advice_threshold must be a positive number of seconds (default "
            f"{ADVICE_THRESHOLD}), got {threshold!r}"
        )
    return float(threshold)


def default_cpu_count() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def executor_capacity(executor: Executor) -> int:
    """How many tasks to keep in flight on ``executor`` when ``cpu_limit`` is None.

    A ``concurrent.futures`` pool says (``_max_workers``). A Dask executor gets
    `DASK_IN_FLIGHT`, or twice its cluster's worker threads if that is more: the lane
    sends tasks and fetches results in bulk, and a window that covers the round trips
    to the cluster's scheduler keeps its threads busy (4 in flight on 2 threads cost
    ~2.7x `client.map`; 64, 1.1-1.4x; 128-256, ~1.0x, also on a loaded machine).
    Otherwise, the CPUs this process may use.
    """
    workers = getattr(executor, "_max_workers", None)
    if isinstance(workers, int) and workers >= 1:
        return workers
    threads = dask_threads(executor)
    if threads is not None:
        return max(DASK_IN_FLIGHT, 2 * threads)
    return default_cpu_count()


def dask_threads(executor: Executor) -> int | None:
    """The worker threads of a Dask executor's cluster; None if ``executor`` is not
    Dask's, or the cluster cannot say (a warning is logged then)."""
    client = getattr(executor, "_client", None)
    if client is None or not type(executor).__module__.startswith("distributed"):
        return None
    try:
        threads = int(sum(client.nthreads().values()))
    except Exception:  # an unreachable cluster: fall back, the tasks will say why
        logging.getLogger("tasklanes").warning(
            "could not ask the Dask cluster for its threads; cpu capacity falls back "
            "to this machine's CPUs",
            exc_info=True,
        )
        return None
    return threads if threads >= 1 else None


def cpu_capacity(cpu_limit: int | None, executor: Executor | None) -> int:
    """The cpu lane's capacity: ``cpu_limit``, or the executor's (or this machine's)."""
    if cpu_limit is not None:
        return cpu_limit
    if executor is not None:
        return executor_capacity(executor)
    return default_cpu_count()


def mp_context(given: BaseContext | None) -> BaseContext | None:
    """The process pool's start method: ``given``, or None for the default, which the
    pool decides as it starts, because it depends on the threads running then: a
    zygote in a process with one thread, else forkserver on Linux, spawn elsewhere
    (`tasklanes._processes._pool.ProcessPool`, docs/start-methods.md)."""
    return given
