"""The exceptions tasklanes raises on its own account.

Every exception here pickles, because the cpu lane carries them between processes.
"""

from __future__ import annotations

__all__ = ["TaskCancelled", "TaskTimeout", "WorkerCrashed"]


class TaskTimeout(TimeoutError):
    """A task ran longer than its per-task ``timeout``.

    ``.index`` is the task's position in its batch (``None`` for a single
    ``offload`` call), ``.timeout`` the limit it overran, in seconds.
    """

    def __init__(self, index: int | None = None, timeout: float | None = None) -> None:
        self.index = index
        self.timeout = timeout
        where = "a task" if index is None else f"task {index}"
        limit = "" if timeout is None else f" of {timeout:g} s"
        super().__init__(f"{where} overran its timeout{limit}")

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[int | None, float | None]]:
        return (type(self), (self.index, self.timeout))


class WorkerCrashed(Exception):
    """The worker process running a task died before the task finished.

    The cause is outside the task's Python code: ``os._exit``, a signal (SIGKILL from
    outside, the OOM killer), a segfault in an extension. Only the task that was
    running fails this way; the pool replaces the worker.

    ``.index`` is the task's position in its batch, ``.exitcode`` the worker's exit
    code (negative for a signal, as in ``multiprocessing``), ``.signal`` the signal's
    name when a signal ended it.
    """

    def __init__(self, index: int | None = None, exitcode: int | None = None) -> None:
        self.index = index
        self.exitcode = exitcode
        self.signal: str | None = None
        if exitcode is not None and exitcode < 0:
            import signal as _signal

            try:
                self.signal = _signal.Signals(-exitcode).name
            except ValueError:
                self.signal = f"signal {-exitcode}"
        where = "a task" if index is None else f"task {index}"
        if self.signal is not None:
            how = f"was killed by {self.signal}"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "died"
        super().__init__(f"the worker process running {where} {how}")

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[int | None, int | None]]:
        return (type(self), (self.index, self.exitcode))


class TaskCancelled(Exception):
    """Raised by [check_cancelled][tasklanes.check_cancelled] in a blocking task that should stop.

    The task's batch no longer wants its result: it timed out, failed fast, or its
    caller was cancelled. Let it propagate; tasklanes discards it.
    """


def closed_error(index: int | None = None) -> RuntimeError:
    """What a task gets when its Scheduler is closed before it finished; without an
    index, what a batch gets when it asks a closed Scheduler's lane for work."""
    if index is None:
        return RuntimeError(
            "this Scheduler is closed (Scheduler.close()): it starts no more work; "
            "create a new one"
        )
    return RuntimeError(
        f"task {index} did not finish: its Scheduler was closed (Scheduler.close()) first"
    )
