"""The cpu workers' resident memory and CPU time, read from `/proc` (Linux).

Elsewhere (or for a process that is gone) a worker reads as zeros: these figures are
for monitoring, never worth an error. Until the process pool reports them itself
(`ProcessPool.worker_resources()`), the cpu lane reads them here by pid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ._stats import WorkerResources

__all__ = ["process_resources", "workers_resources"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_resources(pid: int) -> tuple[int, float] | None:
    """`(resident bytes, user + system CPU seconds)` of one process, or None."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError, IndexError):
        return None
    # Fields after the command name, which is in parentheses and may hold spaces:
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[11]) + int(fields[12])
    except (ValueError, IndexError):
        return None
    return resident_pages * _PAGE, ticks / _TICKS


def workers_resources(pids: Iterable[int]) -> WorkerResources:
    """The sums of [process_resources][] over `pids` (those that could be read)."""
    workers = 0
    memory = 0
    cpu_time = 0.0
    for pid in pids:
        got = process_resources(pid)
        if got is None:
            continue
        workers += 1
        memory += got[0]
        cpu_time += got[1]
    return WorkerResources(workers, memory, cpu_time)
