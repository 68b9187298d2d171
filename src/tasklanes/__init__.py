"""tasklanes: one way to run many tasks concurrently, whatever kind of work they are.

``await run_all(tasks, kind="io" | "blocking" | "cpu", limit=..., timeout=...)``

* ``"io"``: coroutines on the caller's event loop (asyncio, uvloop or trio);
* ``"blocking"``: sync code that waits, on a shared pool of worker threads;
* ``"cpu"``: sync code that computes, on a shared pool of worker processes.
"""

from ._api import amap, as_completed, run_all, run_all_sync
from ._batch import BatchIterator
from ._call import Call, call
from ._cancel import check_cancelled
from ._errors import TaskCancelled, TaskTimeout, WorkerCrashed
from ._offload import Offloaded, offload
from ._progress import ProgressUpdate
from ._scheduler import Scheduler, get_scheduler
from ._stats import LaneSnapshot, TimingSummary

__version__ = "0.1.0"

__all__ = [
    "BatchIterator",
    "Call",
    "LaneSnapshot",
    "Offloaded",
    "ProgressUpdate",
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
