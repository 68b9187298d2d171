"""tasklanes: one way to run many tasks concurrently, whatever kind of work they are.

``await run_all(tasks, kind="io" | "blocking" | "cpu", limit=..., timeout=...)``

* ``"io"``: coroutines on the caller's event loop (asyncio, uvloop or trio);
* ``"blocking"``: sync code that waits, on a shared pool of worker threads;
* ``"cpu"``: sync code that computes, on a shared pool of worker processes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

# Events outside a task's result go to this logger (and its children, such as
# "tasklanes.advice"); the application decides where they are shown.
logging.getLogger("tasklanes").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AutoDecision",
    "BatchIterator",
    "Call",
    "KindWarning",
    "LaneSnapshot",
    "Limiter",
    "Limiters",
    "Offloaded",
    "ProgressUpdate",
    "Retry",
    "Scheduler",
    "TaskCancelled",
    "TaskTimeout",
    "TimingSummary",
    "WorkerCrashed",
    "amap",
    "as_completed",
    "call",
    "check_cancelled",
    "get_scheduler",
    "offload",
    "run_all",
    "run_all_sync",
]

# Names are imported on first use (PEP 562). Why: worker processes import this
# package to reach their own module, and a script that only calls run_all_sync on
# the cpu lane should not pay for importing anyio's asyncio machinery twice over.
_SOURCES = {
    "amap": "_api",
    "as_completed": "_api",
    "run_all": "_api",
    "run_all_sync": "_api",
    "AutoDecision": "_auto",
    "BatchIterator": "_batch",
    "Call": "_call",
    "call": "_call",
    "check_cancelled": "_cancel",
    "Limiter": "_limits",
    "Limiters": "_limits",
    "Retry": "_retry",
    "TaskCancelled": "_errors",
    "TaskTimeout": "_errors",
    "WorkerCrashed": "_errors",
    "KindWarning": "_advice",
    "Offloaded": "_offload",
    "offload": "_offload",
    "ProgressUpdate": "_progress",
    "Scheduler": "_scheduler",
    "get_scheduler": "_scheduler",
    "LaneSnapshot": "_snapshots",
    "TimingSummary": "_snapshots",
}

if TYPE_CHECKING:
    from ._advice import KindWarning
    from ._api import amap, as_completed, run_all, run_all_sync
    from ._auto import AutoDecision
    from ._batch import BatchIterator
    from ._call import Call, call
    from ._cancel import check_cancelled
    from ._errors import TaskCancelled, TaskTimeout, WorkerCrashed
    from ._limits import Limiter, Limiters
    from ._offload import Offloaded, offload
    from ._progress import ProgressUpdate
    from ._retry import Retry
    from ._scheduler import Scheduler, get_scheduler
    from ._snapshots import LaneSnapshot, TimingSummary


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklanes' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"tasklanes.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
