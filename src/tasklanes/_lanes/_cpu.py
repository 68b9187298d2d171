"""The cpu lane on tasklanes' own worker-process pool (temporary engine).

The first engine runs on a ``ProcessPoolExecutor``; the process pool in
``tasklanes._processes`` replaces it.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext

from ._executor import ExecutorLane, default_cpu_count

__all__ = ["ProcessLane"]


def default_context() -> BaseContext:
    return multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")


class ProcessLane(ExecutorLane):
    def __init__(self, capacity: int | None, mp_context: BaseContext | None) -> None:
        capacity = capacity or default_cpu_count()
        executor = ProcessPoolExecutor(capacity, mp_context=mp_context or default_context())
        super().__init__(executor, capacity, own=True)
