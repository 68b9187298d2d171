"""Nested batches: a task that starts a batch on the lane it runs on.

A blocking task that waits for a blocking batch of the same Scheduler holds one of
the threads that batch needs: once every thread runs such a task, nothing can run
and everything waits for ever. A cpu task runs in a worker process, which is a
daemonic process and may not start worker processes of its own. Neither can be made
to work in general without breaking the lane's capacity, so both fail at once, with
a `RuntimeError` that says why and what to do instead. Other nestings are fine: a
blocking task may start an io or cpu batch, a cpu task a blocking one, and any task
may use another `Scheduler`, which owns other threads and processes.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["refuse_nested_cpu", "refuse_nested_blocking"]


def refuse_nested_blocking(lane: Any) -> None:
    """Raise if the calling thread is a worker of ``lane`` (a blocking lane).

    Cheap for every other caller: a thread-name check before any lookup.
    """
    if not threading.current_thread().name.startswith("tasklanes-blocking"):
        return
    owns = getattr(lane, "owns_current_thread", None)
    if owns is not None and owns():
        raise RuntimeError(
            "a blocking task cannot start a batch on the blocking lane it runs on: it "
            "would hold a thread that the batch needs, and once every thread does this "
            "nothing runs again. Start the inner batch on another Scheduler "
            "(Scheduler(blocking_limit=...): its own threads), use kind='io' or "
            "kind='cpu' for it, or return the work to the caller and run it from there"
        )


def refuse_nested_cpu() -> None:
    """Raise if this process is a worker process (no pool of its own can start here)."""
    import multiprocessing

    process = multiprocessing.current_process()
    if process.name == "tasklanes-worker" or process.daemon:
        # A worker still importing the main module is not a nested batch but a script
        # without `if __name__ == "__main__":`: that gets its own exit and advice.
        from ._processes._context import refuse_while_importing_main

        refuse_while_importing_main()
        raise RuntimeError(
            "a cpu task cannot start a batch with kind='cpu': it runs in a worker "
            "process, which is a daemonic process and may not start worker processes "
            "of its own. Run the inner work directly in this task, use "
            "kind='blocking' for it, give the Scheduler a cpu_executor (a Dask "
            "client's executor works from anywhere), or return the work to the caller"
        )
